"""Who a session speaks for: what a token authenticator returns.

An :class:`Identity` is the whole of what broker_ws keeps of a token once it is
accepted: the user (for revocations and in-band refresh), the logins whose
account frames the session may receive (the security boundary: nothing else
decides it), and the token's expiry and issue time. A host's
``TOKEN_AUTHENTICATOR`` builds one from its own tokens; its values are checked
here, once, so that a host's mistake (a login given as a number, an expiry in
seconds) is a clear error in the server log rather than a session that sees
nothing or never expires.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: An expiry below this many milliseconds since the epoch (1973) is taken for one
#: given in seconds by mistake.
_SMALLEST_EXPIRY_MS = 100_000_000_000


@dataclass(frozen=True, slots=True)
class Identity:
    """A validated token: who it speaks for, what it may see, and until when.

    Attributes:
        user_id: the user's primary key as a string; :func:`broker_ws.revoke_user`
            and in-band refresh compare it.
        username: shown in ``authorized.data.user``.
        logins: the logins whose account frames the session receives, in order and
            without repeats (an iterable of strings is accepted and made a tuple).
        expires_ms: the token's expiry, **milliseconds** since the epoch (a JWT's
            ``exp`` times 1000); the session is closed with 4003 then.
        issued_at: the token's issue time, seconds since the epoch (a JWT's
            ``iat``); 0 when the token has none, which a revocation of the user
            then always covers.
    """

    user_id: str
    username: str
    logins: tuple[str, ...]
    expires_ms: int
    issued_at: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.user_id, str) or not self.user_id:
            raise TypeError(f"Identity.user_id must be a non-empty str, not {self.user_id!r}")
        if not isinstance(self.username, str):
            raise TypeError(f"Identity.username must be a str, not {self.username!r}")
        object.__setattr__(self, "logins", _logins(self.logins))
        expires = self.expires_ms
        if isinstance(expires, bool) or not isinstance(expires, int):
            raise TypeError(f"Identity.expires_ms must be an int, not {expires!r}")
        if expires < _SMALLEST_EXPIRY_MS:
            raise ValueError(
                f"Identity.expires_ms = {expires} is before 1973: milliseconds since the "
                "epoch are expected (a JWT's exp * 1000)"
            )
        issued = self.issued_at
        if isinstance(issued, bool) or not isinstance(issued, int) or issued < 0:
            raise TypeError(f"Identity.issued_at must be an int >= 0 (seconds), not {issued!r}")

    @property
    def expired(self) -> bool:
        """Whether the token's expiry has passed."""
        return self.expires_ms <= time.time() * 1000


def _logins(value: Any) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"Identity.logins must be an iterable of str, not {value!r}")
    logins = tuple(value)
    for login in logins:
        if not isinstance(login, str) or not login:
            raise TypeError(f"Identity.logins must hold non-empty strs, not {login!r}")
    return tuple(dict.fromkeys(logins))
