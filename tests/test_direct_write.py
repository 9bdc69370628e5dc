"""Frames written straight to daphne's and uvicorn's transports: the same bytes, in the
same order, as the server itself would send."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Generator
from pathlib import Path

import pytest
import websockets
from websockets.frames import Frame, Opcode

from broker_ws.servers import Transport, transport_for
from broker_ws.wire.encoded import EncodedFrame, text_frame_header
from tests.servers import deployment, obtain_token

TIMEOUT = 15.0


def parse_server_frame(wire: bytes) -> Frame:
    """Parse ``wire`` with the websockets library's own frame parser, as a client does."""
    position = 0

    def read_exact(n: int) -> Generator[None, None, bytes]:
        nonlocal position
        chunk = wire[position : position + n]
        position += n
        assert len(chunk) == n, "frame shorter than its header says"
        return chunk
        yield  # a generator, as Frame.parse expects

    parser = Frame.parse(read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        assert position == len(wire), "bytes left after the frame"
        return done.value
    raise AssertionError("parser wanted more bytes")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_encoded_frame_is_a_final_unmasked_text_frame_of_any_length(length: int) -> None:
    """Each of the three length encodings of RFC 6455 §5.2, at its edges."""
    text = "é" * (length // 2) + "x" * (length % 2)
    encoded = EncodedFrame(text)
    frame = parse_server_frame(encoded.wire)
    assert (frame.opcode, frame.fin, frame.rsv1) == (Opcode.TEXT, True, False)
    assert frame.data.decode() == text
    assert encoded.wire.endswith(encoded.data)
    assert len(text_frame_header(len(encoded.data))) in (2, 4, 10)


def test_other_servers_and_test_communicators_keep_the_asgi_send() -> None:
    """Only daphne's and uvicorn's websockets-sansio protocols are written to directly."""

    async def asgi_send(message: dict[str, object]) -> None:
        return None

    class OtherProtocol:
        async def send(self, message: dict[str, object]) -> None:
            return None

    assert type(transport_for(asgi_send)) is Transport
    assert type(transport_for(OtherProtocol().send)) is Transport
    assert type(transport_for(object())) is Transport


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_direct_quotes_and_queued_frames_of_every_size_arrive_intact_and_in_order(
    tmp_path: Path, server: str
) -> None:
    """Under daphne and uvicorn, with the demo feed streaming quotes through the direct path,
    notifications of 5 B, 200 B and 70 KB (the three header forms) arrive whole, in
    the order sent, between quote frames that all parse."""
    texts = ["hello", "n" * 200, "big " * 17_500]
    with deployment("embedded", tmp_path) as demo:
        host = demo.start_server("--server", server, "--rate", "50", "--symbols", "EUR/USD")
        token = obtain_token(host, "alice", "alice-demo-pass")["access"]
        async with websockets.connect(f"ws://{host}/", max_size=2**20) as ws:
            await ws.send(json.dumps({"authorization": token}))
            assert json.loads(await ws.recv())["event"] == "authorized"
            await ws.send(json.dumps({"event": "subscribe", "data": ["EUR/USD"]}))
            for text in texts:
                await asyncio.to_thread(demo.manage, "ws_notify", text, "--login", "1001")

            received: list[str] = []
            quotes = 0
            async with asyncio.timeout(TIMEOUT):
                while len(received) < len(texts) or quotes < 20:
                    frame = json.loads(await ws.recv())
                    if isinstance(frame, list) and frame[0] == "n":
                        received.append(frame[4])
                    elif isinstance(frame, list) and frame[0] == "t":
                        assert frame[1] == "EUR/USD" and frame[2] < frame[3]
                        quotes += 1
            assert received == texts


#: Runs ``manage.py ...`` with autobahn's ``_perMessageCompress`` looking renamed to
#: broker_ws's daphne shortcuts (as an upgrade renaming it would), and only to them:
#: autobahn itself, which daphne's ASGI ``send`` goes through, still finds it.
RENAMED_ATTRIBUTE = """\
import runpy
import sys
from pathlib import Path

from autobahn.websocket.protocol import WebSocketProtocol


def read(protocol):
    if sys._getframe(1).f_globals.get("__name__") == "broker_ws.servers.daphne":
        raise AttributeError("'WebSocketServerProtocol' has no attribute '_perMessageCompress'")
    return protocol.__dict__.get("_renamed_compress")


def write(protocol, value):
    protocol.__dict__["_renamed_compress"] = value


WebSocketProtocol._perMessageCompress = property(read, write)
sys.argv = sys.argv[1:]
sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


async def test_a_renamed_daphne_attribute_turns_the_shortcut_off_and_every_frame_arrives(
    tmp_path: Path,
) -> None:
    """The direct write fails on its first frame; it is turned off for the process with
    one WARNING, and that frame and every later one go through daphne's ASGI send."""
    wrapper = tmp_path / "renamed_attribute.py"
    wrapper.write_text(RENAMED_ATTRIBUTE)
    texts = ["hello", "n" * 200, "big " * 17_500]
    with deployment("embedded", tmp_path) as demo:
        host = demo.start_server("--rate", "50", "--symbols", "EUR/USD", wrapper=[str(wrapper)])
        token = obtain_token(host, "alice", "alice-demo-pass")["access"]
        async with websockets.connect(f"ws://{host}/", max_size=2**20) as ws:
            await ws.send(json.dumps({"authorization": token}))
            assert json.loads(await ws.recv())["event"] == "authorized"
            await ws.send(json.dumps({"event": "subscribe", "data": ["EUR/USD"]}))
            assert json.loads(await ws.recv())["event"] == "subscribed"
            for text in texts:
                await asyncio.to_thread(demo.manage, "ws_notify", text, "--login", "1001")
            received: list[str] = []
            quotes = 0
            async with asyncio.timeout(TIMEOUT):
                while len(received) < len(texts) or quotes < 20:
                    frame = json.loads(await ws.recv())
                    if isinstance(frame, list) and frame[0] == "n":
                        received.append(frame[4])
                    elif isinstance(frame, list) and frame[0] == "t":
                        quotes += 1
            assert received == texts
        (log,) = demo.stop()
    assert log.count("direct write shortcut failed") == 1, log
    assert "_perMessageCompress" in log
