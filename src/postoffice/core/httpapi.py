"""What an HTTP port serves, whatever the wire (HTTP/1.1, HTTP/2): requests, responses,
routes and endpoints, and `answer`, the one place that routes, authenticates and checks.

Core layer, pure: no I/O. core/http.py (h11) and core/http2.py (h2) are its two shells.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final, Protocol, TypeAlias

#: A request body past this is refused with 413 unless its endpoint says otherwise: the
#: admin API's bodies are a few settings, and the cap bounds what one peer makes us hold.
MAX_BODY_BYTES: Final = 64 * 1024

_TEXT: Final = "text/plain; charset=utf-8"
_JSON: Final = "application/json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """What a route answers: status code, body, the body's content type, extra headers."""

    status: int
    body: bytes
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Stream:
    """An endless or long response: its chunks are sent as they come (chunked encoding on
    HTTP/1.1, DATA frames on HTTP/2).

    The response ends when the iterator ends or the client goes away (the iterator is then
    closed, so a subscriber can unsubscribe in its `finally`).
    """

    chunks: AsyncIterator[bytes]
    content_type: str = _TEXT


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequest:
    """One request as a handler sees it: the method and path upper- and as-sent, the query
    string apart, header names lower-cased, the whole body."""

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


#: A plain route: GET and HEAD only, no request needed (health, metrics, info).
Route: TypeAlias = Callable[[], Response | Stream | Awaitable[Response]]
#: An endpoint's handler of one method.
Handler: TypeAlias = Callable[[HttpRequest], Response | Awaitable[Response]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A path whose methods see the request: `handlers` by method (HEAD is GET without
    the body). With `password`, a request needs `Authorization: Bearer <it>` or Basic
    with any user and it as the password; `password()` is read per request, so a
    changed password applies at once. A body must be JSON and at most `max_body_bytes`.
    """

    handlers: Mapping[str, Handler]
    password: Callable[[], str | None] | None = None
    max_body_bytes: int = MAX_BODY_BYTES


class WebSocketChannel(Protocol):
    """What a WebSocket's handler sees of its connection (core/websocket.py)."""

    @property
    def peer(self) -> str:
        """The client's address, `host:port`."""
        ...

    def send(self, message: bytes | str) -> None:
        """Send one message: a text frame for str, a binary frame for bytes."""

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame with `code` and close the connection once it is out."""

    def extra_info(self, name: str) -> object:
        """The socket's transport information (`peername`, `sockname`, ...)."""

    def write_buffer_size(self) -> int:
        """Bytes written and not yet taken by the kernel."""


class MessageHandler(Protocol):
    """One WebSocket's service side: its messages in, its end."""

    def on_message(self, message: bytes | str) -> None:
        """One whole message (text as str, binary as bytes), within the route's limit."""

    def on_close(self) -> None:
        """The connection is gone (either side closed it, or it broke)."""

    def pause_writing(self) -> None:
        """The peer is not reading: stop producing until `resume_writing`."""

    def resume_writing(self) -> None:
        """The peer read what was queued."""


#: Opens a WebSocket's handler once its handshake is accepted.
WebSocketOpener: TypeAlias = Callable[[HttpRequest, WebSocketChannel], MessageHandler]


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketRoute:
    """A path that a WebSocket handshake upgrades (core/websocket.py); any other request
    to it goes to `fallback` (the same data another way), or gets 426. A message longer
    than `max_message_bytes()` closes the connection with 1009. With `password`, the
    handshake needs the Authorization header an Endpoint needs (401/403 otherwise)."""

    opener: WebSocketOpener
    max_message_bytes: Callable[[], int]
    fallback: Route | None = None
    password: Callable[[], str | None] | None = None


Routes: TypeAlias = Mapping[str, "Route | Endpoint | WebSocketRoute"]

Answer: TypeAlias = Response | Stream | Awaitable[Response]


def error_response(
    status: int, message: str, *, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    """A JSON error: `{"error": <status phrase, lower-case>, "message": message}`."""
    body = json.dumps({"error": _phrase(status), "message": message}).encode() + b"\n"
    return Response(status=status, body=body, content_type=_JSON, headers=headers)


def json_response(value: object, *, status: int = 200) -> Response:
    """`value` as a JSON body (keys as given; anything not JSON shown with str)."""
    body = json.dumps(value, default=str).encode() + b"\n"
    return Response(status=status, body=body, content_type=_JSON)


def text_response(status: int) -> Response:
    """The plain-text answer the probe ports give: the status phrase, lower-case."""
    return Response(status=status, body=f"{_phrase(status)}\n".encode())


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "bad request"


NOT_FOUND: Final = Response(status=404, body=b"not found\n")
PLAIN_NOT_ALLOWED: Final = Response(
    status=405, body=b"method not allowed\n", headers=(("allow", "GET, HEAD"),)
)
BODY_REFUSED: Final = Response(status=413, body=b"request bodies are not accepted\n")


def body_limit(routes: Routes, method: str, path: str) -> int:
    """How many body bytes a request to `path` may carry (0: none). A request over it is
    refused with 413 before its body is read. An endpoint reads a body of any method
    within its limit, so a method it does not take is told 405, not 413."""
    route = routes.get(path)
    if isinstance(route, Endpoint) and method not in ("GET", "HEAD"):
        return route.max_body_bytes
    return 0


def too_large(limit: int) -> Response:
    """The 413 for a body over `limit` (0: the route takes no body)."""
    if limit == 0:
        return BODY_REFUSED
    return error_response(413, f"request body exceeds limit {limit} bytes")


def answer(routes: Routes, request: HttpRequest) -> Answer:
    """Route `request`: 404 for an unknown path, 405 (with Allow) for a method the path
    does not take, 401/403 for missing or wrong credentials, 415 for a body that is not
    JSON, 426 for a WebSocket path asked without the handshake; otherwise what the route
    answers. A route's exceptions propagate (the shell answers 500)."""
    route = routes.get(request.path)
    if route is None:
        return NOT_FOUND
    if isinstance(route, WebSocketRoute):
        if route.fallback is None:
            return error_response(
                426, "this path speaks WebSocket only", headers=(("upgrade", "websocket"),)
            )
        route = route.fallback
    if isinstance(route, Endpoint):
        return _endpoint(route, request)
    if request.method not in ("GET", "HEAD"):
        return PLAIN_NOT_ALLOWED
    return route()


def _endpoint(endpoint: Endpoint, request: HttpRequest) -> Answer:
    method = "GET" if request.method == "HEAD" else request.method
    handler = endpoint.handlers.get(method)
    if handler is None:
        allow = ", ".join(_allowed(endpoint))
        return error_response(
            405,
            f"method {request.method} not allowed on {request.path}, allowed: {allow}",
            headers=(("allow", allow),),
        )
    refusal = check_auth(endpoint.password, request.header("authorization"))
    if refusal is not None:
        return refusal
    if request.body or method not in ("GET", "HEAD", "DELETE"):
        kind = (request.header("content-type") or "").partition(";")[0].strip().lower()
        if kind != _JSON:
            shown = kind or "none"
            return error_response(415, f"expected content-type {_JSON}, got {shown}")
    return handler(request)


def _allowed(endpoint: Endpoint) -> list[str]:
    methods = list(endpoint.handlers)
    if "GET" in methods:
        methods.insert(methods.index("GET") + 1, "HEAD")
    return methods


_CHALLENGE: Final = (("www-authenticate", 'Bearer realm="postoffice", Basic realm="postoffice"'),)


def check_auth(
    password: Callable[[], str | None] | None, authorization: str | None
) -> Response | None:
    """None when the request may go on: no password is set, or `authorization` carries it
    (Bearer, or Basic with any user). 401 with a challenge when credentials are missing,
    403 when they are wrong or malformed."""
    expected = password() if password is not None else None
    if expected is None:
        return None
    if authorization is None:
        return error_response(401, "authentication required", headers=_CHALLENGE)
    scheme, _, credentials = authorization.strip().partition(" ")
    scheme = scheme.lower()
    credentials = credentials.strip()
    if scheme == "bearer":
        given = credentials
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return error_response(403, "malformed basic credentials")
        given = decoded.partition(":")[2]
    else:
        return error_response(403, f"unsupported authorization scheme {scheme!r}")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return error_response(403, "invalid password")
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonBody:
    """A request body parsed as a JSON object of scalar settings, or the 400 refusing it."""

    settings: dict[str, str] = field(default_factory=dict)
    refusal: Response | None = None


def settings_body(request: HttpRequest) -> JsonBody:
    """The body of PUT /config: a JSON object whose values are strings, numbers or null
    (null: the empty value, as CONFIG SET name ""), each turned into CONFIG SET's text."""
    try:
        value = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        return JsonBody(refusal=error_response(400, f"body is not valid JSON: {exc}"))
    if not isinstance(value, dict):
        found = type(value).__name__
        return JsonBody(refusal=error_response(400, f"expected a JSON object, got {found}"))
    if not value:
        return JsonBody(refusal=error_response(400, "expected at least one setting, got none"))
    settings: dict[str, str] = {}
    for name, raw in value.items():
        if raw is None:
            settings[name] = ""
        elif isinstance(raw, bool) or not isinstance(raw, str | int | float):
            found = type(raw).__name__
            return JsonBody(
                refusal=error_response(
                    400, f"setting {name!r} must be a string or a number, got {found}"
                )
            )
        elif isinstance(raw, float) and raw.is_integer():
            settings[name] = str(int(raw))
        else:
            settings[name] = str(raw)
    return JsonBody(settings=settings)


__all__ = [
    "MAX_BODY_BYTES",
    "Answer",
    "Endpoint",
    "Handler",
    "HttpRequest",
    "JsonBody",
    "MessageHandler",
    "Response",
    "Route",
    "Routes",
    "Stream",
    "WebSocketChannel",
    "WebSocketOpener",
    "WebSocketRoute",
    "answer",
    "body_limit",
    "check_auth",
    "error_response",
    "json_response",
    "settings_body",
    "text_response",
    "too_large",
]
