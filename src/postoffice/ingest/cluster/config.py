"""The cluster library's settings: where NATS and S3 are, which node this is, and the
heartbeat, staleness and lease times that ownership runs on."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, final
from urllib.parse import urlsplit

from postoffice.core.errors import ConfigError

DEFAULT_REGION: Final = "us-east-1"


def parse_nats_urls(text: str) -> tuple[str, ...]:
    """The URLs of `nats://a:4222,nats://b:4222`; ConfigError naming the bad one."""
    urls = tuple(part.strip() for part in text.split(",") if part.strip())
    if not urls:
        raise ConfigError(f"cluster: no NATS URL in {text!r}")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ConfigError(f"cluster: {url!r} is not a nats://HOST:PORT URL")
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when it is read
        except ValueError as exc:
            raise ConfigError(f"cluster: {url!r} has a bad port") from exc
    return urls


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """How to reach the cluster, and its timing.

    A node renews its key every `heartbeat_s`; an observer holds a node dead once that
    key's revision has not changed for `stale_s` of the observer's own monotonic clock; a
    node that has not renewed for `lease_s` (default `stale_s - 1`) holds its claims lost.
    One KV or S3 request waits `request_timeout_s`; an event's publish is retried for
    `publish_timeout_s`, long enough for JetStream to elect a new stream leader (5 to 8 s
    measured with nats-server 2.9.10). S3 credentials not given here come from the AWS_*
    environment variables.
    """

    nats_urls: tuple[str, ...]
    s3_url: str
    bucket: str
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str = DEFAULT_REGION
    replicas: int | None = None
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 5.0
    publish_timeout_s: float = 30.0
    heartbeat_s: float = 1.0
    stale_s: float = 4.0
    lease_s: float | None = None
    #: A node's events consumer is removed by JetStream once the node has not read from
    #: it for this long (gone for good, or down longer than its events matter): consumers
    #: of nodes that never come back do not pile up in the stream.
    consumer_idle_s: float = 3600.0

    def __post_init__(self) -> None:
        if not self.nats_urls:
            raise ConfigError("cluster: nats_urls is empty")
        parts = urlsplit(self.s3_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"cluster: s3 url {self.s3_url!r} is not http(s)://HOST[:PORT]")
        if len(self.bucket) < 3:
            raise ConfigError(f"cluster: bucket {self.bucket!r} needs 3 characters or more")
        if self.replicas is not None and not 1 <= self.replicas <= 5:
            raise ConfigError(f"cluster: replicas {self.replicas} outside 1..5")
        for name in (
            "connect_timeout_s",
            "request_timeout_s",
            "publish_timeout_s",
            "heartbeat_s",
            "stale_s",
            "consumer_idle_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"cluster: {name} {value} must be a positive number")
        if self.stale_s <= self.heartbeat_s:
            raise ConfigError(
                f"cluster: stale_s {self.stale_s} must exceed heartbeat_s {self.heartbeat_s}"
            )
        if not 0 < self.lease < self.stale_s:
            raise ConfigError(
                f"cluster: lease_s {self.lease} must be above 0 and below stale_s {self.stale_s}"
            )

    @property
    def lease(self) -> float:
        """The lease in seconds: `lease_s`, or one second less than `stale_s`."""
        return self.lease_s if self.lease_s is not None else self.stale_s - 1.0

    @staticmethod
    def region_from(environ: Mapping[str, str] | None = None) -> str:
        """The S3 region a node signs its requests for when none is given: AWS_REGION, else
        AWS_DEFAULT_REGION (as the AWS tools read them), else us-east-1, which S3-compatible
        stores such as MinIO and moto accept."""
        env = os.environ if environ is None else environ
        return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION

    def credentials(self, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
        """The S3 key id and secret: the ones given, else AWS_ACCESS_KEY_ID and
        AWS_SECRET_ACCESS_KEY; None when neither has both (obstore then looks further)."""
        env = os.environ if environ is None else environ
        key_id = self.access_key_id or env.get("AWS_ACCESS_KEY_ID")
        secret = self.secret_access_key or env.get("AWS_SECRET_ACCESS_KEY")
        if key_id and secret:
            return key_id, secret
        return None
