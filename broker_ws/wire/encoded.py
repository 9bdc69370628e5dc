"""A text frame encoded for the wire once, for every session that gets it.

A quote, an account frame or a broadcast goes to many sessions of a process;
its UTF-8 bytes and its WebSocket framing (RFC 6455 §5.2) are made once
here and handed to each session's transport as they are.
"""

from __future__ import annotations

import struct

#: First byte of an unfragmented, uncompressed text frame: FIN + opcode 1.
_TEXT_FIN = 0x81


class EncodedFrame:
    """One text frame: its text, its UTF-8 bytes and (on first use) its wire bytes."""

    __slots__ = ("_wire", "data", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.data = text.encode()
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        """The frame as a server sends it (RFC 6455 §5.2: servers do not mask)."""
        if self._wire is None:
            self._wire = text_frame_header(len(self.data)) + self.data
        return self._wire


def text_frame_header(length: int) -> bytes:
    """The header of an unmasked, final text frame carrying ``length`` bytes."""
    if length < 126:
        return bytes((_TEXT_FIN, length))
    if length < 1 << 16:
        return struct.pack("!BBH", _TEXT_FIN, 126, length)
    return struct.pack("!BBQ", _TEXT_FIN, 127, length)
