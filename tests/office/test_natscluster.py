"""office.natscluster's pure parts: the demo cluster's ports, nats-server config, service
specs, what `up --cluster` prints, and the flags it refuses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from postoffice.cli import main as cli_main
from postoffice.core.errors import ConfigError
from postoffice.office import natscluster
from postoffice.office.cli import cluster_lines
from postoffice.office.natscluster import (
    DEFAULT_CLUSTER_BASE,
    MOTO_CREDENTIALS,
    ClusterPlan,
    ClusterPorts,
    cluster_ports,
    cluster_services,
    find_moto_server,
    find_nats_server,
    nats_config,
    send_line,
)
from postoffice.office.services import ChildState, ChildStatus, Launch

_DATA = Path("/srv/po")


def _launch(name: str) -> Launch:
    return Launch(data_dir=_DATA, ready_file=_DATA / "run" / f"{name}.ready.json")


def _plan(**changes: str) -> ClusterPlan:
    settings = {"nats_server": "/usr/sbin/nats-server", "moto_server": "/venv/bin/moto_server"}
    settings |= changes
    if "s3_url" in changes:
        del settings["moto_server"]
    return ClusterPlan(ports=cluster_ports(DEFAULT_CLUSTER_BASE), **settings)


class TestPorts:
    def test_the_default_block_lays_out_every_port(self) -> None:
        assert cluster_ports(7500) == ClusterPorts(
            nats_client=(7500, 7501, 7502),
            nats_route=(7503, 7504, 7505),
            nats_monitor=(7506, 7507, 7508),
            s3=7509,
            ingest_sys=(7510, 7530),
            ingest_data=(7520, 7540),
        )

    @pytest.mark.parametrize("base", [1, 1023, 65487, 65535])
    def test_a_block_that_does_not_fit_is_refused(self, base: int) -> None:
        with pytest.raises(
            ConfigError,
            match=rf"^cluster base port {base} out of range: the block of 50 ports needs"
            r" 1024\.\.65486, or 0 for free ones$",
        ):
            cluster_ports(base)

    def test_base_zero_picks_distinct_free_ports_and_lets_ingest_pick_its_own(self) -> None:
        ports = cluster_ports(0)
        fixed = [*ports.nats_client, *ports.nats_route, *ports.nats_monitor, ports.s3]
        assert len(set(fixed)) == len(fixed) == 10
        assert all(port > 0 for port in fixed)
        assert ports.ingest_sys == ports.ingest_data == (0, 0)


def test_nats_config_routes_to_the_other_servers_with_jetstream_on_loopback() -> None:
    text = nats_config(
        name="nats2",
        client_port=7501,
        route_port=7504,
        monitor_port=7507,
        peer_route_ports=(7503, 7505),
        store_dir=Path("/srv/po/cluster/nats2"),
        log_file=Path("/srv/po/cluster/nats2.log"),
    )
    assert text == (
        "server_name: nats2\n"
        "listen: 127.0.0.1:7501\n"
        "http: 127.0.0.1:7507\n"
        'log_file: "/srv/po/cluster/nats2.log"\n'
        'jetstream { store_dir: "/srv/po/cluster/nats2" }\n'
        "cluster {\n"
        "  name: postoffice\n"
        "  listen: 127.0.0.1:7504\n"
        '  routes: ["nats-route://127.0.0.1:7503", "nats-route://127.0.0.1:7505"]\n'
        "  no_advertise: true\n"
        "}\n"
    )


class TestServices:
    def test_with_moto_the_order_is_nats_s3_then_the_ingest_nodes(self) -> None:
        names = [spec.name for spec in cluster_services(_plan())]
        assert names == ["nats1", "nats2", "nats3", "s3", "ingest-a", "ingest-b"]

    def test_each_nats_server_runs_under_the_runner_with_the_others_as_peers(self) -> None:
        specs = {spec.name: spec for spec in cluster_services(_plan())}
        argv = specs["nats1"].argv(_launch("nats1"))
        assert argv == [
            sys.executable, "-m", "postoffice.office.natscluster", "nats",
            "--ready-file", "/srv/po/run/nats1.ready.json", "--dir", "/srv/po/cluster",
            "--name", "nats1", "--server", "/usr/sbin/nats-server",
            "--client-port", "7500", "--route-port", "7503", "--monitor-port", "7506",
            "--peer", "7504", "--peer", "7505",
        ]  # fmt: skip

    def test_only_the_last_nats_server_waits_for_a_jetstream_leader(self) -> None:
        specs = {spec.name: spec for spec in cluster_services(_plan())}
        waits = {
            n: "--wait-leader" in specs[n].argv(_launch(n)) for n in ("nats1", "nats2", "nats3")
        }
        assert waits == {"nats1": False, "nats2": False, "nats3": True}

    def test_moto_gets_its_port_and_bucket(self) -> None:
        specs = {spec.name: spec for spec in cluster_services(_plan(bucket="demo"))}
        argv = specs["s3"].argv(_launch("s3"))
        assert argv[3:] == [
            "s3", "--ready-file", "/srv/po/run/s3.ready.json", "--dir", "/srv/po/cluster",
            "--server", "/venv/bin/moto_server", "--port", "7509", "--bucket", "demo",
        ]  # fmt: skip

    def test_an_ingest_node_serves_in_cluster_mode_in_a_data_dir_of_its_own(self) -> None:
        specs = {spec.name: spec for spec in cluster_services(_plan())}
        argv = specs["ingest-b"].argv(_launch("ingest-b"))
        assert argv[:5] == [sys.executable, "-m", "postoffice", "ingest", "serve"]
        tail = argv[argv.index("--data-dir") :]
        assert tail == [
            "--data-dir", "/srv/po/cluster/ingest-b", "--sys-base", "7530", "--data-base", "7540",
            "--cluster", "nats://127.0.0.1:7500,nats://127.0.0.1:7501,nats://127.0.0.1:7502",
            "--s3", "http://127.0.0.1:7509", "--bucket", "postoffice", "--node-name", "ingest-b",
        ]  # fmt: skip
        assert specs["ingest-b"].env == MOTO_CREDENTIALS

    def test_a_given_store_replaces_moto_and_keeps_the_callers_credentials(self) -> None:
        specs = {
            s.name: s
            for s in cluster_services(_plan(s3_url="https://s3.example.net", bucket="prod"))
        }
        assert "s3" not in specs
        argv = specs["ingest-a"].argv(_launch("ingest-a"))
        assert argv[argv.index("--s3") + 1] == "https://s3.example.net"
        assert argv[argv.index("--bucket") + 1] == "prod"
        assert specs["ingest-a"].env == {}
        assert specs["ingest-a"].needs == ("nats1", "nats2", "nats3")

    def test_a_plan_needs_exactly_one_store(self) -> None:
        with pytest.raises(ConfigError, match=r"^a cluster plan needs exactly one of"):
            ClusterPlan(ports=cluster_ports(7500), nats_server="nats-server")


def test_the_send_line_names_every_node() -> None:
    line = send_line([("127.0.0.1", 7510), ("127.0.0.1", 7530)])
    assert line == "postoffice ingest send --node 127.0.0.1:7510 --node 127.0.0.1:7530 FILE"


def test_up_prints_the_nats_urls_the_s3_endpoint_and_the_send_line() -> None:
    def status(name: str, **listeners: tuple[str, int]) -> ChildStatus:
        return ChildStatus(
            name=name, pid=1, state=ChildState.READY, restarts=0, listeners=listeners,
            last_exit=None,
        )  # fmt: skip

    statuses = [
        status("store", store=("127.0.0.1", 7400)),
        *(status(f"nats{i}", client=("127.0.0.1", 7499 + i)) for i in (1, 2, 3)),
        status("s3", s3=("127.0.0.1", 7509)),
        status("ingest-a", health=("127.0.0.1", 7510), ack=("127.0.0.1", 7513)),
        status("ingest-b", health=("127.0.0.1", 7530)),
    ]
    assert cluster_lines(statuses) == (
        "cluster: NATS nats://127.0.0.1:7500,nats://127.0.0.1:7501,nats://127.0.0.1:7502\n"
        "cluster: S3 http://127.0.0.1:7509\n"
        "cluster: postoffice ingest send --node 127.0.0.1:7510 --node 127.0.0.1:7530 FILE"
    )


def test_without_moto_server_the_error_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        ConfigError,
        match=r"^moto_server not found: install it \(pip install 'moto\[server\]', in the dev"
        r" extra\) or give a real S3 store with --s3 URL --bucket NAME$",
    ):
        find_moto_server()


def test_without_nats_server_the_error_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(natscluster, "_NATS_DEB", str(tmp_path / "nats-server"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        ConfigError,
        match=r"^nats-server not found: install nats-server 2\.9\+ \(Debian: apt-get install"
        r" nats-server, or `make tools`\)$",
    ):
        find_nats_server()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--s3", "http://127.0.0.1:9000"], "--s3 and --bucket go with --cluster"),
        (["--bucket", "b"], "--s3 and --bucket go with --cluster"),
        (["--cluster", "--s3", "http://127.0.0.1:9000"], "--s3 needs --bucket NAME too"),
        (["--cluster", "--cluster-base", "80"], "cluster base port 80 out of range"),
    ],
)
def test_up_refuses_cluster_flags_that_do_not_go_together(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli_main, ["up", "--data-dir", str(tmp_path), *flags])
    assert result.exit_code == 1
    assert message in result.output
    assert not (tmp_path / "run").exists()
