"""The cluster settings: NATS URL lists, timing checks, replicas and credentials."""

from __future__ import annotations

import pytest

from postoffice.core.errors import ConfigError
from postoffice.ingest.cluster import ClusterConfig, parse_nats_urls


def _config(**options: object) -> ClusterConfig:
    settings: dict[str, object] = {
        "nats_urls": ("nats://a:4222",),
        "s3_url": "http://127.0.0.1:9000",
        "bucket": "bucket",
    } | options
    return ClusterConfig(**settings)  # type: ignore[arg-type]  # each test sets its fields


def test_a_comma_separated_list_gives_each_url() -> None:
    assert parse_nats_urls("nats://a:4222, nats://b:4222,") == ("nats://a:4222", "nats://b:4222")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"^cluster: no NATS URL in ''$"),
        ("http://a:4222", r"^cluster: 'http://a:4222' is not a nats://HOST:PORT URL$"),
        ("nats://a:x", r"^cluster: 'nats://a:x' has a bad port$"),
        ("nats://", r"^cluster: 'nats://' is not a nats://HOST:PORT URL$"),
    ],
)
def test_a_bad_url_list_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_nats_urls(text)


def test_the_lease_defaults_to_a_second_under_stale_s() -> None:
    assert _config().lease == 3.0
    assert _config(stale_s=1.0, heartbeat_s=0.2, lease_s=0.6).lease == 0.6


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"stale_s": 1.0, "heartbeat_s": 0.5},
            r"^cluster: lease_s 0\.0 must be above 0 and below stale_s 1\.0$",
        ),
        ({"lease_s": 4.0}, r"^cluster: lease_s 4\.0 must be above 0 and below stale_s 4\.0$"),
        ({"heartbeat_s": 4.0}, r"^cluster: stale_s 4\.0 must exceed heartbeat_s 4\.0$"),
        ({"heartbeat_s": 0.0}, r"^cluster: heartbeat_s 0\.0 must be a positive number$"),
        ({"connect_timeout_s": float("nan")}, r"^cluster: connect_timeout_s nan must be"),
        ({"replicas": 0}, r"^cluster: replicas 0 outside 1\.\.5$"),
        ({"bucket": "ab"}, r"^cluster: bucket 'ab' needs 3 characters or more$"),
        ({"s3_url": "s3://bucket"}, r"^cluster: s3 url 's3://bucket' is not http\(s\)://"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**options)


def test_credentials_given_win_over_the_environment_which_fills_in_otherwise() -> None:
    env = {"AWS_ACCESS_KEY_ID": "env-id", "AWS_SECRET_ACCESS_KEY": "env-secret"}
    assert _config().credentials(env) == ("env-id", "env-secret")
    given = _config(access_key_id="id", secret_access_key="secret")
    assert given.credentials(env) == ("id", "secret")
    assert _config().credentials({}) is None


def test_the_region_comes_from_aws_region_then_aws_default_region_then_us_east_1() -> None:
    both = {"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "ap-south-1"}
    assert ClusterConfig.region_from(both) == "eu-west-3"
    assert ClusterConfig.region_from({"AWS_DEFAULT_REGION": "ap-south-1"}) == "ap-south-1"
    assert ClusterConfig.region_from({}) == "us-east-1"
