"""`/metrics` in the Prometheus text format, on a listener of its own.

The listener is off unless `metrics_listen` is set, and it serves plain HTTP on
a loopback address by default, because the numbers describe traffic to the
registry and are not for clients. The proxy records each request once, when it
ends. Gauges that a scrape can compute (open connections, requests in flight,
seconds until the certificate expires) are computed at scrape time, so they
cost nothing per request.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gateway.config import Listener, format_host_port
from gateway.server import bind_listener

log = logging.getLogger("gateway.server")

# Methods a registry client sends; anything else is counted as "other" so that
# a hostile client cannot grow the label set.
KNOWN_METHODS = frozenset(("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"))
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The gateway's counters, histograms and gauges in one Prometheus registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests", "Requests proxied, by method and status.",
            ("method", "status"), registry=self.registry,
        )
        self.bytes_in = Counter(
            "gateway_request_body_bytes", "Request body bytes received from clients.",
            registry=self.registry,
        )
        self.bytes_out = Counter(
            "gateway_response_body_bytes", "Response body bytes sent to clients.",
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Upstream requests that failed, by kind.",
            ("kind",), registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "gateway_upstream_response_seconds",
            "Seconds from sending a request upstream to its response headers.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self._request_children: dict[tuple[str, int], Counter] = {}

    def record(self, method: str, status: int, bytes_in: int, bytes_out: int) -> None:
        """Count one finished request."""
        key = (method, status)
        child = self._request_children.get(key)
        if child is None:
            label = method if method in KNOWN_METHODS else "other"
            child = self.requests.labels(label, str(status))
            self._request_children[key] = child
        child.inc()
        if bytes_in:
            self.bytes_in.inc(bytes_in)
        if bytes_out:
            self.bytes_out.inc(bytes_out)

    def watch(self, name: str, documentation: str, function: Callable[[], float]) -> None:
        """Add a gauge whose value `function` returns at each scrape."""
        Gauge(name, documentation, registry=self.registry).set_function(function)

    def watch_certificate(self, cert_path: Path) -> None:
        """Add the seconds until the leaf certificate in `cert_path` expires."""
        from gateway import certs

        not_after = certs.load_certs(cert_path)[0].not_valid_after_utc

        def seconds_left() -> float:
            return (not_after - datetime.datetime.now(datetime.timezone.utc)).total_seconds()

        self.watch(
            "gateway_certificate_expiry_seconds",
            "Seconds until the served leaf certificate expires (negative once expired).",
            seconds_left,
        )


class MetricsListener:
    """The plain-HTTP listener that serves GET /metrics."""

    def __init__(self, metrics: Metrics, listener: Listener):
        self.metrics = metrics
        self.listener = listener
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def _serve(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        # bind_listener turns a busy or unavailable address into a one-line ConfigError.
        sock = bind_listener(self.listener)
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self.port = sock.getsockname()[1]
        log.info("Serving metrics on http://%s/metrics", format_host_port(self.listener.host, self.port))

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def start(gateway, cert_path: Path) -> MetricsListener | None:
    """Attach metrics to a started gateway and open its listener, when configured."""
    config = gateway.config
    if config.metrics_listen is None:
        return None
    metrics = Metrics()
    metrics.watch(
        "gateway_open_connections", "Client connections open now.", lambda: gateway.open_connections
    )
    metrics.watch(
        "gateway_requests_in_flight", "Requests being proxied now.", lambda: gateway.proxy.in_flight
    )
    metrics.watch_certificate(cert_path)
    listener = MetricsListener(metrics, config.metrics_listen)
    await listener.start()
    gateway.proxy.metrics = metrics
    return listener
