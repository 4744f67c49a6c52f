"""Merging the workers' INFO and /metrics reports (pure)."""

from __future__ import annotations

from postoffice.command.aggregate import (
    PrimaryUsage,
    Retired,
    WorkerReport,
    WorkerState,
    merge_commandstats,
    merge_info,
    merge_stats,
    sum_section,
)

PRIMARY = PrimaryUsage(rss_bytes=1000, peak_bytes=2000, cpu_sys_s=0.5, cpu_user_s=0.25)


def report(index: int, pid: int, clients: int, commands: int, ping: int) -> WorkerReport:
    return WorkerReport(
        index=index,
        pid=pid,
        sections={
            "server": {"process_id": pid, "tcp_port": 6380},
            "clients": {"connected_clients": clients, "maxclients": 100, "blocked_clients": 1},
            "memory": {
                "used_memory_rss": 1048576,
                "used_memory_rss_human": "1.00M",
                "used_memory_peak": 4096,
            },
            "stats": {
                "total_commands_processed": commands,
                "used_cpu_sys": "1.000000",
                "used_cpu_user": "0.500000",
            },
            "keyspace": {"store": f"worker {index}"},
            "commandstats": {"cmdstat_ping": f"calls={ping}", f"cmdstat_only{index}": "calls=1"},
        },
    )


def states() -> list[WorkerState]:
    return [
        WorkerState(index=0, pid=10, state="listening", restarts=0, last_exit=""),
        WorkerState(index=1, pid=11, state="listening", restarts=2, last_exit="signal SIGKILL"),
        WorkerState(index=2, pid=0, state="restarting", restarts=1, last_exit="exit code 1"),
    ]


def merged() -> dict[str, dict[str, object]]:
    return merge_info(
        [report(0, 10, 3, 30, 5), report(1, 11, 4, 40, 6)],
        origin=1,
        server={"process_id": 1, "uptime_in_seconds": 9},
        primary=PRIMARY,
        roster=states(),
    )


def test_counts_are_summed_and_settings_kept_once() -> None:
    info = merged()
    assert info["clients"] == {"connected_clients": 7, "maxclients": 100, "blocked_clients": 2}
    assert info["stats"]["total_commands_processed"] == 70


def test_cpu_and_memory_cover_every_process() -> None:
    info = merged()
    assert info["stats"]["used_cpu_sys"] == "2.500000"  # two workers plus the primary
    assert info["stats"]["used_cpu_user"] == "1.250000"
    assert info["memory"] == {
        "used_memory_rss": 2 * 1048576 + 1000,
        "used_memory_rss_human": "2.00M",
        "used_memory_peak": 2 * 4096 + 2000,
    }


def test_server_section_is_the_primarys_with_the_worker_that_answered() -> None:
    assert merged()["server"] == {
        "process_id": 1,
        "uptime_in_seconds": 9,
        "workers": 3,
        "worker_id": 1,
        "worker_process_id": 11,
    }


def test_keyspace_comes_from_the_worker_that_asked() -> None:
    assert merged()["keyspace"] == {"store": "worker 1"}


def test_commandstats_add_up_per_command() -> None:
    assert merged()["commandstats"] == {
        "cmdstat_only0": "calls=1",
        "cmdstat_only1": "calls=1",
        "cmdstat_ping": "calls=11",
    }
    assert merge_commandstats([{"cmdstat_get": "calls=2,usec=9"}, {"cmdstat_get": "junk"}]) == {
        "cmdstat_get": "calls=2"
    }


def test_workers_section_has_a_line_per_worker_even_one_that_is_down() -> None:
    assert merged()["workers"] == {
        "worker0": "pid=10,state=listening,clients=3,commands=30,restarts=0,last_exit=none",
        "worker1": "pid=11,state=listening,clients=4,commands=40,restarts=2,"
        "last_exit=signal_SIGKILL",
        "worker2": "pid=0,state=restarting,clients=0,commands=0,restarts=1,last_exit=exit_code_1",
    }


def test_sections_keep_their_order_and_unknown_values_come_from_the_asker() -> None:
    info = merged()
    assert list(info) == [
        "server",
        "clients",
        "memory",
        "stats",
        "keyspace",
        "commandstats",
        "workers",
    ]
    assert sum_section([{"mode": "a"}, {"mode": "b"}], {"mode": "b"}, {}) == {"mode": "b"}


def test_metrics_counters_are_summed() -> None:
    assert merge_stats([{"commands": 2, "bytes_in": 5}, {"commands": 3}]) == {
        "commands": 5,
        "bytes_in": 5,
    }
    assert merge_stats([]) == {}


def test_what_dead_workers_counted_stays_in_the_totals() -> None:
    retired = Retired(counters=("commands", "bytes_in"))
    retired.add({"commands": 40, "bytes_in": 900, "connections_active": 7, "calls": {"ping": 40}})
    retired.add({"commands": 2, "bytes_in": "bad", "calls": {"ping": 1, "echo": 1, "x": "y"}})
    assert retired.totals == {"commands": 42, "bytes_in": 900}  # no gauge, nothing not an int
    assert retired.calls == {"ping": 41, "echo": 1}
    kept = retired.report((("total_commands_processed", "commands"), ("never_counted", "zz")))
    assert kept.sections == {
        "stats": {"total_commands_processed": 42, "never_counted": 0},
        "commandstats": {"cmdstat_ping": "calls=41", "cmdstat_echo": "calls=1"},
    }
    info = merge_info(
        [report(0, 10, 3, 30, 5), report(1, 11, 4, 40, 6), kept],
        origin=1,
        server={"process_id": 1},
        primary=PRIMARY,
        roster=states(),
    )
    assert info["stats"]["total_commands_processed"] == 30 + 40 + 42
    assert info["commandstats"]["cmdstat_ping"] == "calls=52"  # 5 + 6 from the live ones
    assert info["clients"]["connected_clients"] == 7  # the live workers' alone
    assert set(info["workers"]) == {"worker0", "worker1", "worker2"}  # the roster's lines
    assert merge_stats([{"commands": 5}, retired.totals]) == {"commands": 47, "bytes_in": 900}
    retired.clear()
    assert (retired.totals, retired.calls) == ({}, {})
