"""The command connection's lifecycle, driven through its real `data_received`.

Random reads (whole, pipelined and cut commands), a peer that stops and resumes reading,
QUIT, shutdown and a lost transport, checked against a model of what must have been
answered and which state the connection must be in. While the peer is not reading, what
it sends waits unexecuted, and runs once it reads again.
"""

from __future__ import annotations

import asyncio

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from postoffice.command.config import CommandConfig
from postoffice.command.server import CommandConnection, CommandServer
from postoffice.core.clock import FakeClock
from postoffice.core.resp import encode_command
from postoffice.core.transport import ConnState
from tests.fakes import FakeTransport

S = ConnState

#: Commands that answer on the loop at once, and what each answers.
_COMMANDS: list[tuple[list[bytes], bytes]] = [
    ([b"PING"], b"+PONG\r\n"),
    ([b"ECHO", b"a\r\nb"], b"$4\r\na\r\nb\r\n"),
    ([b"ECHO", b""], b"$0\r\n\r\n"),
    ([b"QUIT"], b"+OK\r\n"),
]


class CommandConnectionMachine(RuleBasedStateMachine):
    """One client: what it sent, what it must have got back, and where it must be."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.clock = FakeClock()
        self.server = CommandServer(CommandConfig(metrics_port=None), clock=self.clock)
        self.conn = CommandConnection(self.server)
        # The loop never runs: the `lose` rule delivers connection_lost itself.
        self.transport = FakeTransport(self.conn, auto_lost=False)
        self.conn.connection_made(self.transport)
        self.unsent = b""  # the rest of a command cut short, sent next
        self.pending = bytearray()  # sent but not yet a whole command
        self.expected = bytearray()  # every reply owed for the whole commands sent
        self.quit = False  # QUIT was answered: the connection is closing
        self.shut = False  # shutdown asked
        self.write_paused = False
        self.parked = False  # bytes arrived while the peer was not reading: they wait
        self.shut_parked = False  # shutdown asked while parked: closes once writable
        self.timed_out = False
        self.lost = False

    @property
    def closing(self) -> bool:
        return self.quit or self.shut or self.timed_out

    def teardown(self) -> None:
        self.loop.close()
        asyncio.set_event_loop(None)

    @precondition(lambda self: not self.lost)
    @rule(
        picks=st.lists(st.integers(0, len(_COMMANDS) - 1), min_size=1, max_size=4),
        cut=st.integers(0, 200),
    )
    def send(self, picks: list[int], cut: int) -> None:
        """Send what is left of a cut command and more commands, perhaps cut short."""
        stream = self.unsent + b"".join(encode_command(_COMMANDS[i][0]) for i in picks)
        cut = max(1, min(cut, len(stream)))
        self.unsent = stream[cut:]
        self.conn.data_received(stream[:cut])
        if self.closing or self.shut_parked:
            return  # a closing connection drops what it reads
        self.pending += stream[:cut]
        if self.write_paused:
            self.parked = True  # nothing runs until the peer reads again
            return
        self._answer_pending()

    def _answer_pending(self) -> None:
        """The whole commands pending are run and answered, up to a QUIT."""
        while self.pending and not self.quit:
            for args, reply in _COMMANDS:
                wire = encode_command(args)
                if self.pending.startswith(wire):
                    self.expected += reply
                    del self.pending[: len(wire)]
                    self.quit = args == [b"QUIT"]
                    break
            else:
                break  # the start of a command: the parser holds it

    @precondition(lambda self: not self.lost)
    @rule()
    def pause_writing(self) -> None:
        self.conn.pause_writing()
        self.write_paused = True

    @precondition(lambda self: not self.lost)
    @rule()
    def resume_writing(self) -> None:
        self.conn.resume_writing()
        self.write_paused = False
        if self.parked:
            self.parked = False
            if self.shut_parked:  # what waited is dropped: the connection closes now
                self.shut_parked = False
                self.shut = True
            else:
                self._answer_pending()

    @precondition(lambda self: not self.lost)
    @rule()
    def shutdown(self) -> None:
        self.conn.shutdown_requested()
        if self.parked and not self.closing:
            self.shut_parked = True  # the batch in progress ends once the peer reads
        else:
            self.shut = True

    @rule()
    def idle_sweep(self) -> None:
        """Time passes beyond the idle timeout: only a live, idle connection is closed."""
        closable = not (self.lost or self.closing or self.write_paused)
        self.clock.advance(self.server.config.idle_timeout_s + 1)
        assert self.server.manager.sweep() == int(closable)
        if closable:
            self.timed_out = True

    @precondition(lambda self: not self.lost)
    @rule()
    def lose(self) -> None:
        self.conn.connection_lost(None)
        self.lost = True

    @invariant()
    def every_whole_command_is_answered_in_order(self) -> None:
        assert bytes(self.transport.written) == bytes(self.expected)

    @invariant()
    def state_follows_the_model(self) -> None:
        state = self.conn.state
        if self.lost:
            assert state is S.CLOSED
        elif self.closing:
            assert state is S.CLOSING
            assert self.transport.closed
        elif self.write_paused:
            assert state is S.WRITING_RESPONSE
            assert self.conn.in_flight is self.parked
        elif self.pending:
            assert state is S.READING_PAYLOAD
        else:
            assert state is S.READING_HEADER

    @invariant()
    def reading_pauses_only_while_the_peer_is_not_reading(self) -> None:
        if not (self.lost or self.closing):
            assert self.transport.reading is not self.write_paused

    @invariant()
    def a_closing_connection_is_not_listed(self) -> None:
        listed = list(self.server.clients())
        assert listed == ([] if self.lost or self.closing or self.shut_parked else [self.conn])


CommandConnectionMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=25, deadline=None
)
TestCommandConnectionMachine = CommandConnectionMachine.TestCase
