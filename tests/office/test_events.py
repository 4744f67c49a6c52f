"""Event records of the run log: round trips, and damaged records refused."""

from __future__ import annotations

import pytest

from postoffice.office.engine import Roster, Simulation
from postoffice.office.errors import EventLogError
from postoffice.office.events import Cause, RunEnded, decode_events, encode_events


def test_every_kind_of_event_survives_the_record() -> None:
    sim = Simulation(
        Roster(
            nof_users=30,
            p_serv_min=0.5,
            p_serv_max=1.0,
            n_requests=4,
            nof_workers=4,
            nof_worker_seats=3,
            nof_pause=3,
        ),
        seed=3,
    )
    events = sim.run_day() + sim.run_day()
    sim.add_users(2)
    events += sim.run_day()
    events.append(RunEnded(days=3, cause=Cause.TIMEOUT, detail="3 days simulated"))
    assert {type(e).__name__ for e in events} >= {
        "DayStarted",
        "UsersAdded",
        "UserArrived",
        "TicketIssued",
        "OperatorSeated",
        "ServiceDone",
        "BreakTaken",
        "NotProvided",
        "DayEnded",
        "RunEnded",
    }
    assert decode_events(encode_events(events)) == events


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (b"{", r"^not an event record: b'\{'$"),
        (b'{"a":1}', r"^not an event record: .*$"),
        (b'[["nope",1]]', r"^not an event: \['nope', 1\]$"),
        (b'[["break",0,1,2]]', r"^bad break event .*: 3 fields, not 5$"),
        (b'[["break",0,1,2,3,"x"]]', r"^bad break event .*: service must be an integer$"),
        (b'[["not_provided",0,1,2,3,4,"bored",0]]', r"^bad not_provided event .*$"),
        (b'[["run_ended",1,"timeout",7]]', r"^bad run_ended event .*: detail must be a string$"),
    ],
)
def test_a_damaged_record_is_refused(record: bytes, message: str) -> None:
    with pytest.raises(EventLogError, match=message):
        decode_events(record)
