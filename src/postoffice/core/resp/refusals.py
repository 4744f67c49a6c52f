"""The refusals every port speaking the command protocol shares: NOAUTH, WRONGPASS, NOPROTO.

Pure: what AUTH and HELLO check, and the errors and replies a client sees when they fail,
with Redis's wording where clients know it (redis-py maps the codes to its exceptions).
"""

from __future__ import annotations

import hmac
from typing import Final

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
