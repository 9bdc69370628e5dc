"""What travels on the bus besides quotes, as typed values and their payload codec.

A message enters a server process either from the bus (a channel name and
a payload string) or from the outbox poll (database rows). Either way it
becomes one of the values below once, where it enters: the hub dispatches
values, never strings it would parse again, and rows from the poll are
never encoded into bus payloads only to be decoded in the same process.

Payloads are plain text so that any bus carries them (Redis pub/sub, the
in-process backend):

* an account frame on a login's channel, and a broadcast on the everyone
  channel: ``"<number> <frame>"`` (the login's seq, or the broadcast's id);
* a revocation: ``"<user_id> <epoch seconds>"``;
* a login's live state (:mod:`broker_ws.publish.state`) on the login's channel:
  the state frame itself, ``[marker, login, null, ...]``. It starts with ``[``
  where a numbered payload starts with a digit, so the two share the login's
  channel (no subscription of its own) and cannot be mistaken for each other.

Quote payloads are the frame itself (:func:`broker_ws.wire.frames.quote`).
"""

from __future__ import annotations

from typing import NamedTuple


class AccountFrame(NamedTuple):
    """Frame number ``seq`` of ``login``, as the outbox numbered it."""

    login: str
    seq: int
    frame: str


class Broadcast(NamedTuple):
    """A notification to every session; ``id`` tells the bus's copy from the poll's."""

    id: int
    frame: str


class Revoked(NamedTuple):
    """``user_id``'s tokens issued up to ``revoked_at`` (epoch seconds) are refused."""

    user_id: str
    revoked_at: float


#: A decoded message other than a quote.
Message = AccountFrame | Broadcast | Revoked


def encode_numbered(number: int, frame: str) -> str:
    """Payload of an account frame (``number``: its seq) or a broadcast (its id)."""
    return f"{number} {frame}"


def decode_numbered(payload: str) -> tuple[int, str]:
    """Invert :func:`encode_numbered`."""
    number, _, frame = payload.partition(" ")
    return int(number), frame


def is_state(payload: str) -> bool:
    """Whether a payload on a login's channel is a state frame (else a numbered one)."""
    return payload[:1] == "["


def state_marker(frame: str) -> str:
    """The marker of a state frame: ``'["e","1001",null,...]'`` -> ``"e"``.

    Read from the text, not parsed: declared markers are ASCII letters and
    digits (:func:`broker_ws.wire.frames.state`), so the marker is what lies
    between the first two quotes.
    """
    return frame[2 : frame.index('"', 2)]


def encode_revocation(user_id: str, revoked_at: float) -> str:
    """Payload of a revocation (``revoked_at`` in epoch seconds)."""
    return f"{user_id} {revoked_at}"


def decode_revocation(payload: str) -> Revoked:
    """Invert :func:`encode_revocation`."""
    user_id, _, when = payload.rpartition(" ")
    return Revoked(user_id, float(when))
