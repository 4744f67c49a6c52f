"""The ingest control port's commands: the table, the handlers, and their two seams.

Handlers answer at once, or with a Deferred whose work the connection runs as a task. They
see the connection as a ControlSession and the server as IngestControl; control.py is the
connection itself (the I/O shell).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Protocol, final

from postoffice import __version__
from postoffice.core.resp import (
    EMPTY_ARRAY,
    HELLO_BEFORE_AUTH,
    MAX_CONFIG_PATTERN_BYTES,
    NIL,
    OK,
    PONG,
    Array,
    Glob,
    Integer,
    Map,
    NoAuthError,
    Reply,
    WrongPassError,
    bulk,
    check_credentials,
    hello_protocol,
)
from postoffice.ingest.config import MAX_DATA_PORTS, IngestConfig
from postoffice.ingest.errors import ControlError, IngestProtocolError, UnknownFileError
from postoffice.ingest.messages import MAX_STATUS_RANGES, FileId, file_id_hex, parse_file_id
from postoffice.ingest.patches import PayloadInfo
from postoffice.ingest.ttl import CleanupReport

log = logging.getLogger(__name__)

MAX_ARGS: Final = 1 << 31  # "no upper bound" for commands of variable arity
MAX_SHOWN_CHARS: Final = 64  # of a client's argument quoted back in an error
#: Longest name HELLO SETNAME takes, as the command server's CLIENT SETNAME: names are
#: labels, and a connection should not pin a long one.
MAX_CLIENT_NAME_BYTES: Final = 256
MAX_LINE_RANGES: Final = 16  # missing ranges on one UPLOADS line; MISSING lists more


# -- the seam to the server ---------------------------------------------------------------


class IngestControl(Protocol):
    """What the control port may ask of the ingest server."""

    @property
    def config(self) -> IngestConfig:
        """The settings now in force: `x` and `ttl_s` reflect run-time changes."""
        ...

    async def set_x(self, x: int) -> None:
        """Scale the data listeners to `x`; raises ConfigError for a bad value."""
        ...

    def set_ttl(self, ttl_s: float) -> None:
        """Use a new retention time; raises ConfigError for a bad value."""
        ...

    def set_max_uploads(self, max_uploads: int) -> None:
        """Bound the uploads in progress at once; raises ConfigError for a bad value."""
        ...

    def set_output_limits(
        self, *, max_output_bytes: int | None = None, max_output_ratio: int | None = None
    ) -> None:
        """Bound the decompressed output of the assemblies that start from now on; raises
        ConfigError for a bad value."""
        ...

    def status(self) -> dict[str, object]:
        """x, ttl_s, data_ports, uploads_in_progress, uploads_total, chunks_total, ..."""
        ...

    def uploads(self) -> list[PayloadInfo]:
        """Uploads not yet published."""
        ...

    def missing(self, file_id: bytes) -> tuple[tuple[int, int], ...]:
        """Inclusive ranges of an upload's missing indexes; raises UnknownFileError."""
        ...

    async def abort(self, file_id: bytes) -> bool:
        """Drop an upload's chunks; False when there is no such upload."""
        ...

    async def cleanup_now(self) -> CleanupReport:
        """Run one TTL cleanup pass now."""
        ...


class ControlSession(Protocol):
    """What a handler may read and change of the connection it answers."""

    control: IngestControl
    #: The token AUTH must match; None when the server needs none.
    token: str | None
    authenticated: bool
    #: The RESP version of the replies (HELLO picks 2 or 3).
    protocol: int
    #: The name HELLO SETNAME gave the connection.
    name: str
    conn_id: int

    def close_when_done(self, reason: str, *, linger: bool = True) -> None:
        """Close once the reply being made now is written (QUIT)."""
        ...


# -- the command table ----------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Deferred:
    """A handler's answer when its work is asynchronous: `work()` makes the reply later."""

    name: str
    work: Callable[[], Awaitable[Reply]]


Handler = Callable[[ControlSession, list[bytes]], Reply | Deferred]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CommandSpec:
    """One control command: `arity` counts the name; a negative arity means at least -arity.

    Flags: `noauth` (allowed before AUTH), `async` (may answer with a Deferred).
    """

    name: str
    arity: int
    handler: Handler
    usage: str
    summary: str
    flags: frozenset[str] = frozenset()
    max_args: int = MAX_ARGS  # only for a negative arity
    min_args: int = field(init=False)
    noauth: bool = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # the dataclass is frozen
        set_(self, "min_args", abs(self.arity))
        if self.arity >= 0:
            set_(self, "max_args", self.arity)
        set_(self, "noauth", "noauth" in self.flags)

    def arity_ok(self, argc: int) -> bool:
        """Whether `argc` arguments (the name included) suit this command."""
        return self.min_args <= argc <= self.max_args


def shown(arg: bytes) -> str:
    return arg.decode("utf-8", "replace")[:MAX_SHOWN_CHARS]


def arity_error(name: str) -> ControlError:
    return ControlError(f"wrong number of arguments for '{name}' command")


def _file_id(arg: bytes) -> FileId:
    try:
        return parse_file_id(arg.decode("ascii"))
    except (UnicodeDecodeError, IngestProtocolError):
        raise ControlError(f"invalid file id '{shown(arg)}': expected 32 hex digits") from None


def _ranges_text(ranges: tuple[tuple[int, int], ...]) -> list[str]:
    return [f"{first}-{last}" for first, last in ranges]


def _number(value: float) -> str:
    """86400.0 as `86400`, 0.5 as `0.5`: what an operator would type."""
    return str(int(value)) if value.is_integer() else repr(value)


def to_reply(value: object) -> Reply:
    """A reply for a STATUS value: numbers, text, None, and lists and maps of them."""
    match value:
        case bool():
            return Integer(value=int(value))
        case int():
            return Integer(value=value)
        case float():
            return bulk(_number(value))
        case str() | bytes():
            return bulk(value)
        case None:
            return NIL
        case Mapping():
            return Map(pairs=[(bulk(str(k)), to_reply(v)) for k, v in value.items()])
        case list() | tuple() | set() | frozenset():
            return Array(items=[to_reply(item) for item in value])
        case _:
            return bulk(str(value))


def upload_line(info: PayloadInfo) -> str:
    """`<file id hex> <name> <committed>/<total> missing=<a-b,c-d>` (`missing=none` if none).

    The name may hold spaces; the id is the first field and the counts the last two.
    Past MAX_LINE_RANGES ranges the list ends with `...(+N)`, N the ranges left out.
    """
    ranges = info.missing
    missing = ",".join(_ranges_text(ranges[:MAX_LINE_RANGES])) or "none"
    if len(ranges) > MAX_LINE_RANGES:
        missing += f",...(+{len(ranges) - MAX_LINE_RANGES})"
    return (
        f"{file_id_hex(info.file_id)} {info.name} {len(info.committed)}/{info.total}"
        f" missing={missing}"
    )


def cmd_ping(conn: ControlSession, args: list[bytes]) -> Reply:
    """PING [message]."""
    return PONG if len(args) == 1 else bulk(args[1])


def cmd_echo(conn: ControlSession, args: list[bytes]) -> Reply:
    """ECHO message."""
    return bulk(args[1])


def cmd_quit(conn: ControlSession, args: list[bytes]) -> Reply:
    """QUIT: reply OK, then close."""
    conn.close_when_done("client quit")
    return OK


def cmd_help(conn: ControlSession, args: list[bytes]) -> Reply:
    """HELP: one line per command."""
    return Array(items=[bulk(f"{spec.usage} -- {spec.summary}") for spec in TABLE.values()])


def cmd_auth(conn: ControlSession, args: list[bytes]) -> Reply:
    """AUTH [user] token: the user, if given, must be `default` (what redis-cli sends)."""
    if conn.token is None:
        raise ControlError("AUTH called but no control token is configured")
    try:
        check_credentials(args[1] if len(args) == 3 else None, args[-1], conn.token)
    except WrongPassError:
        log.warning("control auth failed conn=%s", conn)
        raise
    conn.authenticated = True
    return OK


def cmd_hello(conn: ControlSession, args: list[bytes]) -> Reply:
    """HELLO [2|3 [AUTH user token] [SETNAME name]]: pick the RESP version of the replies."""
    rest = args[1:]
    protocol = conn.protocol
    if rest:
        protocol = hello_protocol(rest[0])
        rest = rest[1:]
    while rest:
        option = rest[0].upper()
        if option == b"AUTH" and len(rest) >= 3:
            cmd_auth(conn, [b"AUTH", rest[1], rest[2]])
            rest = rest[3:]
        elif option == b"SETNAME" and len(rest) >= 2:
            if len(rest[1]) > MAX_CLIENT_NAME_BYTES:
                raise ControlError(
                    f"client name of {len(rest[1])} bytes exceeds limit {MAX_CLIENT_NAME_BYTES}"
                )
            conn.name = shown(rest[1])
            rest = rest[2:]
        else:
            raise ControlError(f"syntax error in HELLO option '{shown(rest[0])}'")
    if not conn.authenticated:
        raise NoAuthError(HELLO_BEFORE_AUTH)
    conn.protocol = protocol
    return Map(
        pairs=(
            (bulk("server"), bulk("postoffice-ingest")),
            (bulk("version"), bulk(__version__)),
            (bulk("proto"), Integer(value=protocol)),
            (bulk("id"), Integer(value=conn.conn_id)),
            (bulk("mode"), bulk("standalone")),
            (bulk("role"), bulk("master")),
            (bulk("modules"), EMPTY_ARRAY),
        )
    )


def cmd_status(conn: ControlSession, args: list[bytes]) -> Reply:
    """STATUS: the server's counters and settings as a map."""
    return to_reply(conn.control.status())


def cmd_uploads(conn: ControlSession, args: list[bytes]) -> Reply:
    """UPLOADS: one line per upload not yet published, oldest first."""
    infos = sorted(conn.control.uploads(), key=lambda info: (info.created, info.file_id))
    return Array(items=[bulk(upload_line(info)) for info in infos])


def cmd_missing(conn: ControlSession, args: list[bytes]) -> Reply:
    """MISSING file_id: the inclusive ranges of indexes not yet committed.

    Like the binary STATUS, at most MAX_STATUS_RANGES (the first ones): send those and ask
    again.
    """
    file_id = _file_id(args[1])
    try:
        ranges = conn.control.missing(file_id)
    except UnknownFileError:
        raise ControlError(f"unknown upload {file_id_hex(file_id)}") from None
    return Array(items=[bulk(text) for text in _ranges_text(ranges[:MAX_STATUS_RANGES])])


async def _abort(control: IngestControl, file_id: FileId) -> Reply:
    if not await control.abort(file_id):
        raise ControlError(f"unknown upload {file_id_hex(file_id)}")
    return OK


def cmd_abort(conn: ControlSession, args: list[bytes]) -> Reply | Deferred:
    """ABORT file_id: drop an upload's chunks (its subscribers get FAILED)."""
    file_id = _file_id(args[1])
    log.info("control abort conn=%s file_id=%s", conn, file_id_hex(file_id))
    return Deferred("abort", partial(_abort, conn.control, file_id))


async def _cleanup(control: IngestControl) -> Reply:
    report = await control.cleanup_now()
    return Integer(value=report.total)


def cmd_cleanup(conn: ControlSession, args: list[bytes]) -> Reply | Deferred:
    """CLEANUP: run a TTL cleanup pass now; the reply counts what it removed."""
    log.info("control cleanup conn=%s", conn)
    return Deferred("cleanup", partial(_cleanup, conn.control))


#: CONFIG SET names.
SETTABLE: Final = ("x", "ttl", "max-output-bytes", "max-output-ratio", "max-uploads")
#: CONFIG GET names, read-only ones included.
READ_ONLY: Final = ("sys-base", "data-base", "files-dir")

_INTEGER: Final = re.compile(rb"[+-]?[0-9]{1,18}")


def config_items(config: IngestConfig) -> dict[str, str]:
    """What CONFIG GET can show, by name."""
    return {
        "x": str(config.x),
        "ttl": _number(config.ttl_s),
        "max-output-bytes": str(config.max_output_bytes),
        "max-output-ratio": str(config.max_output_ratio),
        "max-uploads": str(config.max_uploads),
        "sys-base": str(config.sys_base),
        "data-base": str(config.data_base),
        "files-dir": str(config.files_path),
    }


async def _set_x(control: IngestControl, x: int) -> Reply:
    await control.set_x(x)
    return OK


def _config_set(conn: ControlSession, name: str, raw: bytes) -> Reply | Deferred:
    if name == "x":
        if not _INTEGER.fullmatch(raw):
            raise ControlError(f"setting 'x' must be an integer, got '{shown(raw)}'")
        x = int(raw)
        log.info("control config set conn=%s x=%d", conn, x)
        return Deferred("config set x", partial(_set_x, conn.control, x))
    if name == "ttl":
        try:
            ttl_s = float(raw)
        except ValueError:
            raise ControlError(
                f"setting 'ttl' must be a number of seconds, got '{shown(raw)}'"
            ) from None
        conn.control.set_ttl(ttl_s)
        log.info("control config set conn=%s ttl_s=%s", conn, _number(ttl_s))
        return OK
    if name in ("max-output-bytes", "max-output-ratio", "max-uploads"):
        if not _INTEGER.fullmatch(raw):
            raise ControlError(f"setting '{name}' must be an integer, got '{shown(raw)}'")
        value = int(raw)
        if name == "max-output-bytes":
            conn.control.set_output_limits(max_output_bytes=value)
        elif name == "max-output-ratio":
            conn.control.set_output_limits(max_output_ratio=value)
        else:
            conn.control.set_max_uploads(value)
        log.info("control config set conn=%s %s=%d", conn, name, value)
        return OK
    if name in READ_ONLY:
        raise ControlError(f"setting '{name}' is read-only")
    raise ControlError(f"unknown setting '{name}', expected one of: {', '.join(SETTABLE)}")


_CONFIG_HELP: Final = (
    "CONFIG <subcommand> [<arg> ...]. Subcommands are:",
    "GET <pattern> [<pattern> ...] -- settings whose names match: "
    + ", ".join(SETTABLE + READ_ONLY),
    f"SET x <n> -- run n data ports (1..{MAX_DATA_PORTS}), draining the ones that close",
    "SET ttl <seconds> -- keep uploads, files and records this long",
    "SET max-output-bytes <n> -- largest decompressed file, in bytes",
    "SET max-output-ratio <n> -- largest decompressed/compressed ratio past 16 MiB (0: none)",
    "SET max-uploads <n> -- uploads in progress at once; chunks starting more get BUSY",
)


def cmd_config(conn: ControlSession, args: list[bytes]) -> Reply | Deferred:
    """CONFIG GET pattern... | SET name value | HELP."""
    sub = args[1].upper()
    if sub == b"GET":
        if len(args) < 3:
            raise arity_error("config|get")
        items = config_items(conn.control.config)
        found: dict[str, str] = {}
        # Redis's globs, linear in the name and refused past the length limit before
        # anything is compiled (the command server's CONFIG GET keeps the same rules).
        globs = [Glob.compile(p.lower(), limit=MAX_CONFIG_PATTERN_BYTES) for p in args[2:]]
        for glob in globs:
            found.update({k: v for k, v in items.items() if glob.matches(k.encode())})
        return Map(pairs=[(bulk(key), bulk(value)) for key, value in found.items()])
    if sub == b"SET":
        if len(args) != 4:
            raise arity_error("config|set")
        return _config_set(conn, args[2].decode("utf-8", "replace").lower(), args[3])
    if sub == b"HELP" and len(args) == 2:
        return Array(items=[bulk(line) for line in _CONFIG_HELP])
    raise ControlError(
        f"unknown subcommand or wrong number of arguments for '{shown(args[1])}'. Try CONFIG HELP."
    )


def _spec(
    name: str,
    arity: int,
    handler: Handler,
    usage: str,
    summary: str,
    *flags: str,
    max_args: int = MAX_ARGS,
) -> CommandSpec:
    return CommandSpec(
        name=name,
        arity=arity,
        handler=handler,
        usage=usage,
        summary=summary,
        flags=frozenset(flags),
        max_args=max_args,
    )


#: Keyed by the upper-cased name; the order is HELP's.
TABLE: Final[dict[bytes, CommandSpec]] = {
    spec.name.upper().encode(): spec
    for spec in (
        _spec("ping", -1, cmd_ping, "PING [message]", "PONG, or the message", max_args=2),
        _spec("echo", 2, cmd_echo, "ECHO message", "the message"),
        _spec("quit", -1, cmd_quit, "QUIT", "reply OK and close the connection", "noauth"),
        _spec("help", 1, cmd_help, "HELP", "this list", "noauth"),
        _spec(
            "hello",
            -1,
            cmd_hello,
            "HELLO [2|3 [AUTH user token] [SETNAME name]]",
            "handshake: RESP2 or RESP3 replies",
            "noauth",
        ),
        _spec(
            "auth",
            -2,
            cmd_auth,
            "AUTH [user] token",
            "authenticate with the control token",
            "noauth",
            max_args=3,
        ),
        _spec("status", 1, cmd_status, "STATUS", "settings, ports, uploads and totals"),
        _spec(
            "uploads",
            1,
            cmd_uploads,
            "UPLOADS",
            "uploads not yet published: id, name, committed/total, missing ranges",
        ),
        _spec("missing", 2, cmd_missing, "MISSING file_id", "an upload's missing index ranges"),
        _spec("abort", 2, cmd_abort, "ABORT file_id", "drop an upload's chunks", "async"),
        _spec(
            "config",
            -2,
            cmd_config,
            "CONFIG GET pattern | SET name value (CONFIG HELP lists them)",
            "read and change settings at run time",
            "async",
        ),
        _spec(
            "cleanup",
            1,
            cmd_cleanup,
            "CLEANUP",
            "run a TTL cleanup pass now; replies how many things it removed",
            "async",
        ),
    )
}


__all__ = [
    "MAX_ARGS",
    "MAX_LINE_RANGES",
    "MAX_SHOWN_CHARS",
    "TABLE",
    "CommandSpec",
    "ControlSession",
    "Deferred",
    "IngestControl",
    "arity_error",
    "config_items",
    "shown",
    "to_reply",
    "upload_line",
]
