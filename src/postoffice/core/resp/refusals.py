"""The refusals every port speaking the command protocol shares: NOAUTH, WRONGPASS, NOPROTO.

Pure: what AUTH and HELLO check, and the errors and replies a client sees when they fail,
with Redis's wording where clients know it (redis-py maps the codes to its exceptions).
"""

from __future__ import annotations

import hmac
from typing import Final, final

from postoffice.core.errors import (
    AUTH_REQUIRED,
    NoAuthError,
    NoProtoError,
    WrongPassError,
)
from postoffice.core.resp.replies import Error

#: The RESP versions HELLO may pick.
PROTOCOL_VERSIONS: Final = (2, 3)
#: Of a client's argument quoted back in a refusal, at most this many characters.
MAX_SHOWN_CHARS: Final = 64

HELLO_BEFORE_AUTH: Final = (
    "HELLO must be called with the client already authenticated, "
    "or with HELLO <proto> AUTH <user> <password>"
)


#: The reply to any command but AUTH, HELLO, QUIT and HELP before AUTH.
NOAUTH: Final = Error(code=NoAuthError.wire_code, message=AUTH_REQUIRED)


def _shown(arg: bytes) -> str:
    """A client's argument as text fit to quote back: UTF-8 (bad bytes replaced), cut short."""
    return arg.decode("utf-8", "replace")[:MAX_SHOWN_CHARS]


def hello_protocol(arg: bytes) -> int:
    """The RESP version `HELLO arg` asks for. Raises NoProtoError unless it is 2 or 3."""
    if arg in (b"2", b"3"):
        return int(arg)
    expected = " or ".join(str(v) for v in PROTOCOL_VERSIONS)
    raise NoProtoError(f"unsupported protocol version '{_shown(arg)}', expected {expected}")


def check_credentials(user: bytes | None, password: bytes, secret: str) -> None:
    """Check `AUTH [user] password` against the port's `secret` (the user must be `default`).

    The password is compared in constant time, and always, so that a wrong user costs what
    a wrong password does. Raises WrongPassError when either is wrong.
    """
    password_ok = hmac.compare_digest(password, secret.encode())
    if not (password_ok and (user is None or user == b"default")):
        raise WrongPassError()


#: Failed AUTHs one connection may make: the reply to the last one is followed by a close
#: (as sshd's MaxAuthTries), so a guesser must reconnect and start its delays over.
MAX_AUTH_FAILURES: Final = 10
#: The delay before the reply to a connection's second failed AUTH in a row (the first, a
#: typo as often as not, is answered at once); it doubles with each further failure, up to
#: MAX_AUTH_DELAY_S.
AUTH_DELAY_S: Final = 0.05
MAX_AUTH_DELAY_S: Final = 2.0
#: Why a connection that failed too often is closed.
AUTH_FAILURES_CLOSE: Final = "too many failed AUTH attempts"


@final
class AuthThrottle:
    """Slows down one connection's repeated AUTH failures.

    Pure: `failed()` records a failure and says how long to hold its WRONGPASS reply (the
    connection reads nothing meanwhile, so its next guess waits too); `exhausted` says
    whether to close after that reply; `passed()` starts over. Ten failures in a row cost
    a guesser about 9 s and its connection.
    """

    __slots__ = ("failures",)

    def __init__(self) -> None:
        self.failures = 0

    def failed(self) -> float:
        """Record a failed AUTH; the seconds its reply is to be held (0: none)."""
        self.failures += 1
        if self.failures == 1:
            return 0.0
        return float(min(MAX_AUTH_DELAY_S, AUTH_DELAY_S * 2.0 ** (self.failures - 2)))

    def passed(self) -> None:
        """A successful AUTH: the failures before it no longer count."""
        self.failures = 0

    @property
    def exhausted(self) -> bool:
        """Whether the connection is to be closed after this failure's reply."""
        return self.failures >= MAX_AUTH_FAILURES

    def __repr__(self) -> str:
        return f"<AuthThrottle failures={self.failures}>"
