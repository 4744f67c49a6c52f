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
from postoffice.command import (
    blocking,
    databases,
    expiry,
    hashes,
    keyspace,
    lists,
    ranges,
    streams,
    strings,
    zsets,
)
from postoffice.command.cluster import (
    Cluster,
    client_list_reply,
    done_reply,
    info_sections,
    killed_one_reply,
    killed_reply,
)
from postoffice.command.encodings import EncodingLimits
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

#: The flags of the commands the connection runs itself (CommandSpec.special).
_SPECIAL_FLAGS: Final = frozenset({"transaction", "blocks", "wakes"})
#: The commands after which the clients blocked on their key look for an item.
WAKING_COMMANDS: Final = frozenset({"lpush", "rpush"})

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
    db: int  # the SELECTed database, 0..15

    def describe(self) -> str: ...

    def close_when_done(self, reason: str, *, linger: bool = True) -> None:
        """Close once the reply to the command running now is out."""
        ...


class ServerView(Protocol):
    """What a handler may ask of the server."""

    #: What DEBUG SLEEP blocks its worker thread with: time.sleep, or a test's stand-in
    #: (an attribute, since a compiled build does not see a patched module global).
    sleep: Callable[[float], None]

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

    @property
    def encoding_limits(self) -> EncodingLimits:
        """CONFIG's hash and sorted-set encoding thresholds, as they are now."""
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
    #: The connection runs it itself, or runs something after it: MULTI/EXEC/DISCARD
    #: ("transaction"), BLPOP/BRPOP ("blocks"), a list push that wakes them ("wakes").
    special: bool = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # the dataclass is frozen
        set_(self, "min_args", abs(self.arity))
        set_(self, "max_args", self.arity if self.arity >= 0 else MAX_ARGS)
        set_(self, "blocking", "blocking" in self.flags)
        set_(self, "noauth", "noauth" in self.flags)
        set_(self, "store", "store" in self.flags)
        set_(self, "rate_limited", self.name not in NEVER_RATE_LIMITED)
        set_(self, "special", not self.flags.isdisjoint(_SPECIAL_FLAGS))

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
    if len(args) > 2:
        raise CommandError("wrong number of arguments for 'ping' command")
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
    server.sleep(seconds)
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


def cmd_by_connection(server: ServerView, client: ClientView, args: list[bytes]) -> Reply:
    """MULTI, EXEC, DISCARD: the connection answers them (its transaction is its own), so
    this runs only for a caller that is not one."""
    raise CommandError(f"{_text(args[0]).upper()} is answered by a client connection only")


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


#: The keyspace commands of command/strings.py, expiry.py and databases.py:
#: (name, arity, handler, summary, group).
_KEYSPACE_COMMANDS: Final[tuple[tuple[str, int, Handler, str, str], ...]] = (
    ("incr", 2, strings.cmd_incr, "add one to an integer value", "string"),
    ("decr", 2, strings.cmd_decr, "subtract one from an integer value", "string"),
    ("incrby", 3, strings.cmd_incrby, "add an increment to an integer value", "string"),
    ("decrby", 3, strings.cmd_decrby, "subtract a decrement from an integer value", "string"),
    ("incrbyfloat", 3, strings.cmd_incrbyfloat, "add a float increment to a value", "string"),
    ("append", 3, strings.cmd_append, "append to a value; the new length", "string"),
    ("strlen", 2, strings.cmd_strlen, "the length of a value", "string"),
    ("getset", 3, strings.cmd_getset, "set a value, reply the old one", "string"),
    ("getdel", 2, strings.cmd_getdel, "reply a value and delete its key", "string"),
    ("setnx", 3, strings.cmd_setnx, "set a value when the key is missing", "string"),
    ("getex", -2, strings.cmd_getex, "reply a value and set or remove its expiry", "string"),
    ("msetnx", -3, strings.cmd_msetnx, "set values when every key is missing", "string"),
    ("getrange", 4, ranges.cmd_getrange, "the bytes of a value from start to end", "string"),
    ("substr", 4, ranges.cmd_getrange, "GETRANGE by its old name", "string"),
    ("setrange", 4, ranges.cmd_setrange, "overwrite a value from an offset on", "string"),
    ("getbit", 3, ranges.cmd_getbit, "one bit of a value", "bitmap"),
    ("setbit", 4, ranges.cmd_setbit, "set or clear one bit of a value", "bitmap"),
    ("lcs", -3, ranges.cmd_lcs, "the longest common subsequence of two values", "string"),
    ("setex", 4, strings.cmd_setex, "set a value with an expiry in seconds", "string"),
    ("psetex", 4, strings.cmd_psetex, "set a value with an expiry in milliseconds", "string"),
    ("expire", -3, expiry.cmd_expire, "set a key's time to live in seconds", "keyspace"),
    ("pexpire", -3, expiry.cmd_pexpire, "set a key's time to live in milliseconds", "keyspace"),
    ("expireat", -3, expiry.cmd_expireat, "set a key's expiry as unix seconds", "keyspace"),
    ("pexpireat", -3, expiry.cmd_pexpireat, "set a key's expiry as unix ms", "keyspace"),
    ("ttl", 2, expiry.cmd_ttl, "a key's time to live in seconds", "keyspace"),
    ("pttl", 2, expiry.cmd_pttl, "a key's time to live in milliseconds", "keyspace"),
    ("expiretime", 2, expiry.cmd_expiretime, "a key's expiry as unix seconds", "keyspace"),
    ("pexpiretime", 2, expiry.cmd_pexpiretime, "a key's expiry as unix ms", "keyspace"),
    ("persist", 2, expiry.cmd_persist, "remove a key's expiry", "keyspace"),
    (
        "type",
        2,
        databases.cmd_type,
        "a key's type: string, list, set, zset, hash, stream or none",
        "keyspace",
    ),
    ("rename", 3, databases.cmd_rename, "rename a key", "keyspace"),
    ("renamenx", 3, databases.cmd_renamenx, "rename a key when the new name is free", "keyspace"),
    ("unlink", -2, databases.cmd_unlink, "delete keys; how many existed", "keyspace"),
    ("keys", 2, databases.cmd_keys, "every key matching a pattern", "keyspace"),
    ("randomkey", 1, databases.cmd_randomkey, "a random key, or nil", "keyspace"),
    ("move", 3, databases.cmd_move, "move a key to another database", "keyspace"),
    ("lpush", -3, lists.cmd_lpush, "put items at a list's head", "list"),
    ("rpush", -3, lists.cmd_rpush, "put items at a list's tail", "list"),
    ("lrange", 4, lists.cmd_lrange, "a list's items from start to stop", "list"),
    ("llen", 2, lists.cmd_llen, "a list's length", "list"),
    ("lpop", -2, lists.cmd_lpop, "take items from a list's head", "list"),
    ("rpop", -2, lists.cmd_rpop, "take items from a list's tail", "list"),
    ("sadd", -3, lists.cmd_sadd, "add members to a set", "set"),
    ("srem", -3, lists.cmd_srem, "remove members from a set", "set"),
    ("smembers", 2, lists.cmd_smembers, "every member of a set", "set"),
    ("scard", 2, lists.cmd_scard, "how many members a set has", "set"),
    ("sismember", 3, lists.cmd_sismember, "whether a value is a member of a set", "set"),
    ("srandmember", -2, lists.cmd_srandmember, "random members of a set", "set"),
    ("hset", -4, hashes.cmd_hset, "set fields of a hash; how many are new", "hash"),
    ("hmset", -4, hashes.cmd_hmset, "set fields of a hash", "hash"),
    ("hsetnx", 4, hashes.cmd_hsetnx, "set a field of a hash when it is missing", "hash"),
    ("hget", 3, hashes.cmd_hget, "the value of a field of a hash", "hash"),
    ("hmget", -3, hashes.cmd_hmget, "the values of fields of a hash", "hash"),
    ("hgetall", 2, hashes.cmd_hgetall, "every field and value of a hash", "hash"),
    ("hkeys", 2, hashes.cmd_hkeys, "every field of a hash", "hash"),
    ("hvals", 2, hashes.cmd_hvals, "every value of a hash", "hash"),
    ("hlen", 2, hashes.cmd_hlen, "how many fields a hash has", "hash"),
    ("hexists", 3, hashes.cmd_hexists, "whether a hash has a field", "hash"),
    ("hstrlen", 3, hashes.cmd_hstrlen, "the length of a field's value", "hash"),
    ("hdel", -3, hashes.cmd_hdel, "delete fields of a hash", "hash"),
    ("hincrby", 4, hashes.cmd_hincrby, "add an increment to a field's integer value", "hash"),
    (
        "zadd",
        -4,
        zsets.cmd_zadd,
        "add members to a sorted set, or change their scores",
        "sorted-set",
    ),
    ("zincrby", 4, zsets.cmd_zincrby, "add an increment to a member's score", "sorted-set"),
    ("zscore", 3, zsets.cmd_zscore, "the score of a member of a sorted set", "sorted-set"),
    ("zcard", 2, zsets.cmd_zcard, "how many members a sorted set has", "sorted-set"),
    ("zrem", -3, zsets.cmd_zrem, "remove members from a sorted set", "sorted-set"),
    (
        "zrange",
        -4,
        zsets.cmd_zrange,
        "members of a sorted set by index, score or name",
        "sorted-set",
    ),
    (
        "zrevrange",
        -4,
        zsets.cmd_zrevrange,
        "members of a sorted set by index, highest first",
        "sorted-set",
    ),
    (
        "zrangebyscore",
        -4,
        zsets.cmd_zrangebyscore,
        "members of a sorted set by score",
        "sorted-set",
    ),
    ("xadd", -5, streams.cmd_xadd, "append an entry to a stream; its id", "stream"),
    ("xlen", 2, streams.cmd_xlen, "how many entries a stream has", "stream"),
    ("xrange", -4, streams.cmd_xrange, "a stream's entries from one id to another", "stream"),
    ("xrevrange", -4, streams.cmd_xrevrange, "a stream's entries, newest first", "stream"),
    ("xdel", -3, streams.cmd_xdel, "delete entries of a stream", "stream"),
    ("xgroup", -2, streams.cmd_xgroup, "create, move or destroy a consumer group", "stream"),
    ("xreadgroup", -7, streams.cmd_xreadgroup, "read a stream as a consumer of a group", "stream"),
    ("xack", -4, streams.cmd_xack, "acknowledge a group's pending entries", "stream"),
    ("xinfo", -2, streams.cmd_xinfo, "XINFO STREAM key [FULL]: a stream's state", "stream"),
    ("copy", -3, databases.cmd_copy, "copy a key, within or across databases", "keyspace"),
    ("object", -2, databases.cmd_object, "OBJECT ENCODING | REFCOUNT of a key", "keyspace"),
    ("swapdb", 3, databases.cmd_swapdb, "swap two databases", "server"),
    ("flushdb", -1, databases.cmd_flushdb, "delete every key of the database", "server"),
    ("flushall", -1, databases.cmd_flushall, "delete every key of every database", "server"),
)

#: Keyed by the upper-cased name as it arrives on the wire.
TABLE: Final[dict[bytes, CommandSpec]] = {
    spec.name.upper().encode(): spec
    for spec in (
        _spec("ping", -1, cmd_ping, "PONG, or the message given", "connection", "fast"),
        _spec("echo", 2, cmd_echo, "the message given", "connection", "fast"),
        _spec("time", 1, cmd_time, "the server's time: seconds and microseconds", "server", "fast"),
        _spec("quit", -1, cmd_quit, "reply OK and close the connection", "connection", "noauth"),
        _spec("select", 2, databases.cmd_select, "select the database (0..15)", "connection"),
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
            "function",
            -2,
            databases.cmd_function,
            "FUNCTION FLUSH | LIST (none exist)",
            "scripting",
        ),
        _spec(
            "debug",
            -2,
            cmd_debug,
            "DEBUG SLEEP seconds, run in the worker pool",
            "server",
            "blocking",
        ),
        _spec(
            "shutdown",
            -1,
            cmd_shutdown,
            "stop the server gracefully",
            "server",
            "admin",
            "no-multi",
        ),
        _spec(
            "multi",
            1,
            cmd_by_connection,
            "start a transaction: the commands up to EXEC are queued",
            "transactions",
            "transaction",
        ),
        _spec(
            "exec",
            1,
            cmd_by_connection,
            "run the commands queued since MULTI as one step; an array of their replies",
            "transactions",
            "transaction",
        ),
        _spec(
            "discard",
            1,
            cmd_by_connection,
            "drop the commands queued since MULTI",
            "transactions",
            "transaction",
        ),
        _spec(
            "blpop",
            -3,
            blocking.cmd_blpop,
            "pop the head of the first non-empty list, waiting for a push up to a timeout",
            "list",
            "blocks",
        ),
        _spec(
            "brpop",
            -3,
            blocking.cmd_brpop,
            "pop the tail of the first non-empty list, waiting for a push up to a timeout",
            "list",
            "blocks",
        ),
        _spec("get", 2, keyspace.cmd_get, "the value of a key, or nil", "string", "store"),
        _spec("set", -3, strings.cmd_set, "store a value under a key", "string", "store"),
        _spec("del", -2, keyspace.cmd_del, "delete keys; how many existed", "keyspace", "store"),
        _spec("exists", -2, keyspace.cmd_exists, "how many keys exist", "keyspace", "store"),
        _spec("mget", -2, keyspace.cmd_mget, "the values of keys", "string", "store"),
        _spec("mset", -3, keyspace.cmd_mset, "store several values atomically", "string", "store"),
        _spec(
            "scan", -2, keyspace.cmd_scan, "a page of keys and the next cursor", "keyspace", "store"
        ),
        _spec(
            "dbsize", 1, keyspace.cmd_dbsize, "how many keys the database holds", "server", "store"
        ),
        *(
            _spec(
                name,
                arity,
                handler,
                summary,
                group,
                "store",
                *(("wakes",) if name in WAKING_COMMANDS else ()),
            )
            for name, arity, handler, summary, group in _KEYSPACE_COMMANDS
        ),
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
