"""The command table of the command server: names, arities, flags and handlers.

Handlers are plain functions `(server, client, args) -> Reply` over two seams, ServerView
and ClientView, so they are tested without sockets. A handler flagged `blocking` runs in
the worker pool; every other one runs on the event loop and pays no thread hand-off.
With `--workers N` the commands that concern the whole server (CLIENT LIST and KILL,
INFO, CONFIG SET and RESETSTAT) ask the other workers through `ServerView.cluster` and
answer with a Deferred, so the loop never waits for them.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from postoffice import __version__
from postoffice.command import keyspace
from postoffice.command.cluster import (
    Cluster,
    client_list_reply,
    done_reply,
    info_sections,
    killed_one_reply,
    killed_reply,
)
from postoffice.command.errors import CommandError
from postoffice.command.keyspace import Answer, Deferred, Keyspace, reply_too_large
from postoffice.core.resp import (
    EMPTY_ARRAY,
    HELLO_BEFORE_AUTH,
    MAX_CONFIG_PATTERN_BYTES,
    NIL,
    OK,
    PONG,
    Array,
    Bulk,
    Glob,
    Integer,
    Map,
    NoAuthError,
    Reply,
    SimpleString,
    WrongPassError,
    bulk,
    check_credentials,
    hello_protocol,
)

REDIS_COMPAT_VERSION: Final = "7.0.0"  # what INFO reports as redis_version, for clients that ask
MAX_ARGS: Final = 1 << 31  # "no upper bound" for commands of variable arity
MAX_DEBUG_SLEEP_S: Final = 60.0  # DEBUG SLEEP holds a worker thread; keep it bounded
#: The administrative path: never refused by the rate limit, so a rate set too low (or a
#: client that spent its budget) can always be put right, and a client can always log in,
#: see what is going on and leave.
NEVER_RATE_LIMITED: Final = frozenset(
    {"auth", "hello", "quit", "client", "config", "info", "shutdown"}
)

#: A connection's name, lib-name or lib-ver: kept for the connection's life and shown in
#: every CLIENT LIST line, so not an argument's 8 MiB. Redis sets no limit, but its
#: clients' names are short; this leaves room for any real one.
MAX_CLIENT_NAME_BYTES: Final = 256


class ClientView(Protocol):
    """What a handler may see and change of the calling connection."""

    conn_id: int
    name: bytes
    lib_name: bytes
    lib_ver: bytes
    authenticated: bool
    protocol: int  # 2 or 3: the RESP version of replies, set by HELLO

    def describe(self) -> str: ...

    def close_when_done(self, reason: str, *, linger: bool = True) -> None:
        """Close once the reply to the command running now is out."""
        ...


class ServerView(Protocol):
    """What a handler may ask of the server."""

    @property
    def requirepass(self) -> str | None: ...

    @property
    def max_reply_bytes(self) -> int:
        """The largest reply one command may make."""
        ...

    def clients(self) -> Iterable[ClientView]: ...

    def kill_clients(
        self, *, conn_id: int | None, addr: str | None, skip_id: int | None, caller_id: int | None
    ) -> int: ...

    def config_items(self) -> Mapping[str, str]: ...

    def config_set(self, pairs: list[tuple[str, str]]) -> None: ...

    def config_rewrite(self) -> asyncio.Future[object]:
        """Write the running settings back to the --config file (in a thread); the
        future fails with a CommandError when the server was started without one or
        the write fails."""
        ...

    def info(self) -> dict[str, dict[str, object]]: ...

    def reset_stats(self) -> None: ...

    def request_shutdown(self) -> None: ...

    @property
    def keyspace(self) -> Keyspace | None: ...

    @property
    def cluster(self) -> Cluster | None:
        """The other workers, with --workers N > 1; None for a server of one process."""
        ...


#: A handler answers at once, or later: a Deferred when a store server has to answer
#: first, a Durable when an embedded write waits for its fsync.
Handler = Callable[[ServerView, ClientView, list[bytes]], Answer]


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandSpec:
    """One command: `arity` counts the name; a negative arity means at least -arity."""

    name: str
    arity: int
    handler: Handler
    summary: str
    group: str
    flags: frozenset[str] = frozenset()
    # Derived once, so the per-request checks are plain attribute reads.
    min_args: int = field(init=False)
    max_args: int = field(init=False)
    blocking: bool = field(init=False)  # runs in the worker pool
    noauth: bool = field(init=False)  # allowed before AUTH
    store: bool = field(init=False)  # answered by the keyspace (maybe later); pipelines freely
    rate_limited: bool = field(init=False)  # counts against the client's rate limit

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # the dataclass is frozen
        set_(self, "min_args", abs(self.arity))
        set_(self, "max_args", self.arity if self.arity >= 0 else MAX_ARGS)
        set_(self, "blocking", "blocking" in self.flags)
        set_(self, "noauth", "noauth" in self.flags)
        set_(self, "store", "store" in self.flags)
        set_(self, "rate_limited", self.name not in NEVER_RATE_LIMITED)

    def arity_ok(self, argc: int) -> bool:
        """Whether `argc` arguments (the name included) suit this command."""
        return self.min_args <= argc <= self.max_args


def _text(arg: bytes) -> str:
    return arg.decode("utf-8", "replace")


def _int(arg: bytes, what: str = "value") -> int:
    try:
        return int(arg)
    except ValueError:
        raise CommandError(f"{what} is not an integer or out of range") from None


# -- connection commands ------------------------------------------------------------------


def cmd_ping(server: ServerView, client: ClientView, args: list[bytes]) -> Reply:
    """PING [message]."""
    if len(args) == 1:
        return PONG
    return bulk(args[1])


def cmd_echo(server: ServerView, client: ClientView, args: list[bytes]) -> Reply:
    """ECHO message."""
    return bulk(args[1])


def cmd_time(server: ServerView, client: ClientView, args: list[bytes]) -> Reply:
    """TIME: seconds and microseconds since the epoch."""
    now_ns = time.time_ns()
    return Array(items=(bulk(str(now_ns // 1_000_000_000)), bulk(str(now_ns // 1000 % 1_000_000))))


def cmd_quit(server: ServerView, client: ClientView, args: list[bytes]) -> Reply:
    """QUIT: reply OK, then close."""
    client.close_when_done("client quit")
    return OK


def cmd_select(server: ServerView, client: ClientView, args: list[bytes]) -> Reply:
    """SELECT 0: the only database there is."""
    if _int(args[1]) != 0:
        raise CommandError("DB index is out of range")
    return OK


def cmd_auth(server: ServerView, client: ClientView, args: list[bytes]) -> Reply:
    """AUTH [username] password."""
    if server.requirepass is None:
        raise CommandError(
            "AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?"
        )
    if len(args) > 3:
        raise CommandError("syntax error")
    try:
        check_credentials(args[1] if len(args) == 3 else None, args[-1], server.requirepass)
    except WrongPassError:
        client.authenticated = False
        raise
    client.authenticated = True
    return OK


def cmd_hello(server: ServerView, client: ClientView, args: list[bytes]) -> Reply:
    """HELLO [2|3 [AUTH user pass] [SETNAME name]]: pick the RESP version of the replies."""
    rest = args[1:]
    protocol = client.protocol
    if rest:
        protocol = hello_protocol(rest[0])
        rest = rest[1:]
    while rest:
        option = rest[0].upper()
        if option == b"AUTH" and len(rest) >= 3:
            cmd_auth(server, client, [b"AUTH", rest[1], rest[2]])
            rest = rest[3:]
        elif option == b"SETNAME" and len(rest) >= 2:
            client.name = _client_name(rest[1])
            rest = rest[2:]
        else:
            raise CommandError(f"syntax error in HELLO option {_text(rest[0])!r}")
    if server.requirepass is not None and not client.authenticated:
        raise NoAuthError(HELLO_BEFORE_AUTH)
    client.protocol = protocol
    return Map(
        pairs=(
            (bulk("server"), bulk("redis")),
            (bulk("version"), bulk(REDIS_COMPAT_VERSION)),
            (bulk("postoffice"), bulk(__version__)),
            (bulk("proto"), Integer(value=protocol)),
            (bulk("id"), Integer(value=client.conn_id)),
            (bulk("mode"), bulk("standalone")),
            (bulk("role"), bulk("master")),
            (bulk("modules"), EMPTY_ARRAY),
        )
    )


def _client_name(raw: bytes, what: str = "client name") -> bytes:
    """`raw` as a connection's name (or lib-name, lib-ver); CommandError when it is longer
    than MAX_CLIENT_NAME_BYTES or holds a space or a byte that is not printable ASCII."""
    if len(raw) > MAX_CLIENT_NAME_BYTES:
        raise CommandError(f"{what} of {len(raw)} bytes exceeds limit {MAX_CLIENT_NAME_BYTES}")
    if any(ch <= 0x20 or ch > 0x7E for ch in raw):
        raise CommandError("Client names cannot contain spaces, newlines or special characters.")
    return raw


def cmd_client(server: ServerView, client: ClientView, args: list[bytes]) -> Answer:
    """CLIENT LIST | ID | INFO | SETNAME | GETNAME | SETINFO | KILL | HELP."""
    sub = args[1].upper()
    argc = len(args)
    if sub == b"ID" and argc == 2:
        return Integer(value=client.conn_id)
    if sub == b"GETNAME" and argc == 2:
        return bulk(client.name) if client.name else NIL
    if sub == b"SETNAME" and argc == 3:
        client.name = _client_name(args[2])
        return OK
    if sub == b"SETINFO" and argc == 4:
        attr = args[2].upper()
        if attr == b"LIB-NAME":
            client.lib_name = _client_name(args[3], "lib-name")
        elif attr == b"LIB-VER":
            client.lib_ver = _client_name(args[3], "lib-ver")
        else:
            raise CommandError(f"Unrecognized option '{_text(args[2])}'")
        return OK
    if sub == b"INFO" and argc == 2:
        return bulk(client.describe() + "\n")
    if sub == b"LIST":
        wanted: set[int] | None = None
        if argc >= 4 and args[2].upper() == b"ID":
            wanted = {_int(arg, "client id") for part in args[3:] for arg in part.split()}
        elif argc != 2:
            raise CommandError("syntax error")
        limit = server.max_reply_bytes
        if server.cluster is not None:
            ids = None if wanted is None else sorted(wanted)
            return Deferred(
                server.cluster.client_lines(ids),
                lambda lines: _capped(client_list_reply(lines), limit),
            )
        lines: list[str] = []
        size = 0
        for c in server.clients():
            if wanted is None or c.conn_id in wanted:
                lines.append(c.describe() + "\n")
                size += len(lines[-1])
                if size > limit:
                    raise reply_too_large(size, limit, more=True)
        return bulk("".join(lines))
    if sub == b"KILL" and argc >= 3:
        return _client_kill(server, client, args)
    if sub == b"HELP" and argc == 2:
        return Array(items=tuple(bulk(line) for line in _CLIENT_HELP))
    raise CommandError(
        f"unknown subcommand or wrong number of arguments for '{_text(args[1])}'. Try CLIENT HELP."
    )


_CLIENT_HELP: Final = (
    "CLIENT <subcommand> [<arg> ...]. Subcommands are:",
    "ID -- the id of this connection.",
    "INFO -- a line describing this connection.",
    "LIST [ID id ...] -- a line per connection.",
    "SETNAME name | GETNAME -- name this connection, or read its name.",
    "SETINFO LIB-NAME|LIB-VER value -- record the client library.",
    "KILL ip:port | KILL ID id | KILL ADDR ip:port [SKIPME yes|no] -- close connections.",
)


def _client_kill(server: ServerView, client: ClientView, args: list[bytes]) -> Answer:
    cluster = server.cluster
    if len(args) == 3:  # old form: CLIENT KILL addr, answering OK or an error
        if cluster is not None:
            future = cluster.kill_clients(
                conn_id=None, addr=_text(args[2]), skip_id=None, caller_id=client.conn_id
            )
            return Deferred(future, killed_one_reply)
        killed = server.kill_clients(
            conn_id=None, addr=_text(args[2]), skip_id=None, caller_id=client.conn_id
        )
        if not killed:
            raise CommandError("No such client")
        return OK
    conn_id: int | None = None
    addr: str | None = None
    skip_me = True
    rest = args[2:]
    if len(rest) % 2:
        raise CommandError("syntax error")
    for key, value in zip(rest[::2], rest[1::2], strict=True):
        match key.upper():
            case b"ID":
                conn_id = _int(value, "client-id")
            case b"ADDR":
                addr = _text(value)
            case b"SKIPME":
                skip_me = value.lower() == b"yes"
            case _:
                raise CommandError("syntax error")
    skip_id = client.conn_id if skip_me else None
    if cluster is not None:
        future = cluster.kill_clients(
            conn_id=conn_id, addr=addr, skip_id=skip_id, caller_id=client.conn_id
        )
        return Deferred(future, killed_reply)
    count = server.kill_clients(
        conn_id=conn_id, addr=addr, skip_id=skip_id, caller_id=client.conn_id
    )
    return Integer(value=count)


def cmd_config(server: ServerView, client: ClientView, args: list[bytes]) -> Answer:
    """CONFIG GET pattern... | SET name value ... | REWRITE | RESETSTAT | HELP."""
    sub = args[1].upper()
    if sub == b"GET" and len(args) >= 3:
        items = server.config_items()
        globs = [Glob.compile(p.lower(), limit=MAX_CONFIG_PATTERN_BYTES) for p in args[2:]]
        found = [
            (key, value)
            for key, value in items.items()
            if any(glob.matches(key.encode()) for glob in globs)
        ]
        return Map(pairs=[(bulk(key), bulk(value)) for key, value in found])
    if sub == b"SET" and len(args) >= 4 and len(args) % 2 == 0:
        pairs = [(_text(k).lower(), _text(v)) for k, v in zip(args[2::2], args[3::2], strict=True)]
        server.config_set(pairs)  # checked and applied here first: raises CommandError
        if server.cluster is not None:
            return Deferred(server.cluster.config_set(pairs), done_reply)
        return OK
    if sub == b"REWRITE" and len(args) == 2:
        # Under --workers the primary writes it: it holds the file's name and the
        # settings as given (a worker's own have the fixed port and no metrics port).
        if server.cluster is not None:
            return Deferred(server.cluster.config_rewrite(), done_reply)
        return Deferred(server.config_rewrite(), done_reply)
    if sub == b"RESETSTAT" and len(args) == 2:
        server.reset_stats()
        if server.cluster is not None:
            return Deferred(server.cluster.reset_stats(), done_reply)
        return OK
    if sub == b"HELP" and len(args) == 2:
        return Array(
            items=tuple(
                bulk(line)
                for line in (
                    "CONFIG <subcommand> [<arg> ...]. Subcommands are:",
                    "GET <pattern> [<pattern> ...] -- settings whose names match the patterns.",
                    "SET <name> <value> [<name> <value> ...] -- change settings at run time.",
                    "REWRITE -- write the running settings back to the --config file.",
                    "RESETSTAT -- zero the statistics INFO reports.",
                )
            )
        )
    raise CommandError(
        f"unknown subcommand or wrong number of arguments for '{_text(args[1])}'. Try CONFIG HELP."
    )


def cmd_info(server: ServerView, client: ClientView, args: list[bytes]) -> Answer:
    """INFO [section ...]: server, clients, memory, stats, threads, commandstats."""
    wanted = [_text(a).lower() for a in args[1:]] or ["default"]
    limit = server.max_reply_bytes
    if server.cluster is not None:
        return Deferred(
            server.cluster.info(),
            lambda value: _capped(_info_reply(info_sections(value), wanted), limit),
        )
    return _capped(_info_reply(server.info(), wanted), limit)


def _capped(reply: Bulk, limit: int) -> Bulk:
    """`reply`, or ReplyTooLargeError when its data passes `limit`."""
    if reply.data is not None and len(reply.data) > limit:
        raise reply_too_large(len(reply.data), limit)
    return reply


def _info_reply(sections: Mapping[str, Mapping[str, object]], wanted: list[str]) -> Bulk:
    if "all" in wanted or "everything" in wanted:
        names = list(sections)
    elif "default" in wanted:
        names = [n for n in sections if n != "commandstats"]
    else:
        names = [n for n in sections if n in wanted]
    out: list[str] = []
    for name in names:
        if out:
            out.append("")
        out.append(f"# {name.capitalize()}")
        out.extend(f"{key}:{value}" for key, value in sections[name].items())
    return bulk("\r\n".join(out) + "\r\n" if out else "")


def cmd_shutdown(server: ServerView, client: ClientView, args: list[bytes]) -> Reply:
    """SHUTDOWN [NOSAVE|SAVE|NOW|FORCE|ABORT]: stop the server gracefully."""
    options = {a.upper() for a in args[1:]}
    if b"ABORT" in options:
        raise CommandError("there is no shutdown in progress to abort")
    if not options <= {b"NOSAVE", b"SAVE", b"NOW", b"FORCE"}:
        raise CommandError("syntax error")
    server.request_shutdown()
    client.close_when_done("client quit")
    return OK


def cmd_debug(server: ServerView, client: ClientView, args: list[bytes]) -> Reply:
    """DEBUG SLEEP seconds: hold one worker thread (shows the pool at work)."""
    if args[1].upper() != b"SLEEP" or len(args) != 3:
        raise CommandError("DEBUG supports only SLEEP <seconds>")
    try:
        seconds = float(args[2])
    except ValueError:
        raise CommandError("value is not a valid float") from None
    if not 0 <= seconds <= MAX_DEBUG_SLEEP_S:
        raise CommandError(f"sleep of {seconds} s is outside 0..{MAX_DEBUG_SLEEP_S:g}")
    time.sleep(seconds)
    return OK


def cmd_command(server: ServerView, client: ClientView, args: list[bytes]) -> Reply:
    """COMMAND [COUNT | LIST | INFO name... | DOCS [name...]]."""
    if len(args) == 1:
        return Array(items=tuple(_command_info(spec) for spec in TABLE.values()))
    sub = args[1].upper()
    if sub == b"COUNT" and len(args) == 2:
        return Integer(value=len(TABLE))
    if sub == b"LIST" and len(args) == 2:
        return Array(items=tuple(bulk(spec.name) for spec in TABLE.values()))
    if sub in (b"INFO", b"DOCS"):
        names = [a.upper() for a in args[2:]] or list(TABLE)
        if sub == b"INFO":
            return Array(items=tuple(_command_info(TABLE[n]) if n in TABLE else NIL for n in names))
        docs = [
            (
                bulk(spec.name),
                Map(
                    pairs=(
                        (bulk("summary"), bulk(spec.summary)),
                        (bulk("since"), bulk("1.0.0")),
                        (bulk("group"), bulk(spec.group)),
                    )
                ),
            )
            for spec in (TABLE.get(n) for n in names)
            if spec is not None
        ]
        return Map(pairs=docs)
    raise CommandError(
        f"unknown subcommand or wrong number of arguments for '{_text(args[1])}'. Try COMMAND HELP."
    )


def _command_info(spec: CommandSpec) -> Reply:
    flags = [SimpleString(text=f) for f in sorted(spec.flags)]
    return Array(
        items=(
            bulk(spec.name),
            Integer(value=spec.arity),
            Array(items=flags),
            Integer(value=0),
            Integer(value=0),
            Integer(value=0),
        )
    )


def cmd_help(server: ServerView, client: ClientView, args: list[bytes]) -> Reply:
    """HELP: one line per command."""
    return Array(
        items=tuple(bulk(f"{spec.name.upper()} -- {spec.summary}") for spec in TABLE.values())
    )


def _spec(
    name: str, arity: int, handler: Handler, summary: str, group: str, *flags: str
) -> CommandSpec:
    return CommandSpec(
        name=name,
        arity=arity,
        handler=handler,
        summary=summary,
        group=group,
        flags=frozenset(flags),
    )


#: Keyed by the upper-cased name as it arrives on the wire.
TABLE: Final[dict[bytes, CommandSpec]] = {
    spec.name.upper().encode(): spec
    for spec in (
        _spec("ping", -1, cmd_ping, "PONG, or the message given", "connection", "fast"),
        _spec("echo", 2, cmd_echo, "the message given", "connection", "fast"),
        _spec("time", 1, cmd_time, "the server's time: seconds and microseconds", "server", "fast"),
        _spec("quit", -1, cmd_quit, "reply OK and close the connection", "connection", "noauth"),
        _spec("select", 2, cmd_select, "select database 0 (the only one)", "connection"),
        _spec(
            "auth", -2, cmd_auth, "authenticate with the server's password", "connection", "noauth"
        ),
        _spec("hello", -1, cmd_hello, "handshake (RESP2 only)", "connection", "noauth"),
        _spec("client", -2, cmd_client, "list, name, inspect and kill connections", "connection"),
        _spec(
            "config",
            -2,
            cmd_config,
            "read and change settings at run time, and write them back to the --config file",
            "server",
            "admin",
        ),
        _spec(
            "info", -1, cmd_info, "statistics: server, clients, memory, stats, threads", "server"
        ),
        _spec("command", -1, cmd_command, "describe the commands", "server"),
        _spec("help", 1, cmd_help, "this list", "server"),
        _spec(
            "debug",
            -2,
            cmd_debug,
            "DEBUG SLEEP seconds, run in the worker pool",
            "server",
            "blocking",
        ),
        _spec("shutdown", -1, cmd_shutdown, "stop the server gracefully", "server", "admin"),
        _spec("get", 2, keyspace.cmd_get, "the value of a key, or nil", "string", "store"),
        _spec("set", -3, keyspace.cmd_set, "store a value under a key", "string", "store"),
        _spec("del", -2, keyspace.cmd_del, "delete keys; how many existed", "keyspace", "store"),
        _spec("exists", -2, keyspace.cmd_exists, "how many keys exist", "keyspace", "store"),
        _spec("mget", -2, keyspace.cmd_mget, "the values of keys", "string", "store"),
        _spec("mset", -3, keyspace.cmd_mset, "store several values atomically", "string", "store"),
        _spec(
            "scan", -2, keyspace.cmd_scan, "a page of keys and the next cursor", "keyspace", "store"
        ),
        _spec("dbsize", 1, keyspace.cmd_dbsize, "how many keys the store holds", "server", "store"),
    )
}


def server_facts(port: int, started: float) -> dict[str, object]:
    """The INFO server section's static part."""
    uptime = int(time.time() - started)
    return {
        "postoffice_version": __version__,
        "redis_version": REDIS_COMPAT_VERSION,
        "redis_mode": "standalone",
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "arch_bits": 64 if platform.architecture()[0] == "64bit" else 32,
        "python_version": platform.python_version(),
        "process_id": os.getpid(),
        "tcp_port": port,
        "uptime_in_seconds": uptime,
        "uptime_in_days": uptime // 86400,
    }


#: TABLE plus the lower-case spellings, so most lookups need no upper() call.
LOOKUP: Final[dict[bytes, CommandSpec]] = {
    **{name.lower(): spec for name, spec in TABLE.items()},
    **TABLE,
}
