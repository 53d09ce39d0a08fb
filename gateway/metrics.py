"""`/metrics` in the Prometheus text format, on a listener of its own.

The listener is off unless `metrics_listen` is set, and it serves plain HTTP on
a loopback address by default, because the numbers describe traffic to the
registry and are not for clients. The proxy records each request once, when it
ends. Gauges that a scrape can compute (open connections, requests in flight,
seconds until the certificate expires) are computed at scrape time, so they
cost nothing per request.

With `workers` above 1, every worker counts into memory-mapped files in a
private folder that the parent creates (prometheus_client's multiprocess mode),
and worker 1 serves `/metrics` with the sums over all workers, those that have
exited included. The open-connection and in-flight gauges cannot be read from
another process at scrape time, so each worker writes its own values to the
files every SHARED_REFRESH seconds, and a scrape adds up the workers still
running. The certificate expiry is read by the scraping worker alone, so it
appears once.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
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
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from gateway import certs
from gateway.config import Listener, format_host_port
from gateway.errors import CertificateError
from gateway.server import bind_listener

log = logging.getLogger("gateway.server")

# Methods a registry client sends; anything else is counted as "other" so that
# a hostile client cannot grow the label set.
KNOWN_METHODS = frozenset(("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"))
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Seconds between two writes of a worker's gauges to the shared files, so with
# workers above 1 a scrape shows open connections up to this old.
SHARED_REFRESH = 1.0

_shared_dir: Path | None = None


def share_between_workers(folder: Path) -> None:
    """Switch this process's metrics to memory-mapped files in `folder`.

    prometheus_client picks its value store once, when it is first imported, from
    the PROMETHEUS_MULTIPROC_DIR variable. `serve` imports it before it reads the
    config, so each worker sets the variable and makes the library choose again.
    Call this before the first metric exists in the process. A second call with
    the same folder does nothing, because a second store would write the same
    files as the first.
    """
    global _shared_dir
    if _shared_dir == folder:
        return
    if _shared_dir is not None:
        raise RuntimeError(f"metrics already go to {_shared_dir}, not {folder}")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    values.ValueClass = values.get_value_class()
    _shared_dir = folder


class _ScrapeTimeGauge:
    """A collector of one gauge whose value a function returns at each scrape."""

    def __init__(self, name: str, documentation: str, function: Callable[[], float]) -> None:
        self.name = name
        self.documentation = documentation
        self.function = function

    def collect(self):
        family = GaugeMetricFamily(self.name, self.documentation)
        family.add_metric([], self.function())
        yield family


class Metrics:
    """The gateway's counters, histograms and gauges, and the registry `/metrics` serves.

    With `shared_dir` (workers above 1) the counters and histograms live in the
    shared files, which `registry` reads back summed over every worker. That
    switches the whole process to the files (see `share_between_workers`).
    """

    def __init__(self, shared_dir: Path | None = None) -> None:
        self.shared_dir = shared_dir
        self.registry = CollectorRegistry()
        # In shared mode the metric objects only write the files. Registering them
        # as well would report this worker's values twice.
        own = self.registry if shared_dir is None else None
        if shared_dir is not None:
            share_between_workers(shared_dir)
            MultiProcessCollector(self.registry, path=str(shared_dir))
        self.requests = Counter(
            "gateway_requests", "Requests proxied, by method and status.",
            ("method", "status"), registry=own,
        )
        self.bytes_in = Counter(
            "gateway_request_body_bytes", "Request body bytes received from clients.",
            registry=own,
        )
        self.bytes_out = Counter(
            "gateway_response_body_bytes", "Response body bytes sent to clients.",
            registry=own,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Upstream requests that failed, by kind.",
            ("kind",), registry=own,
        )
        self.upstream_latency = Histogram(
            "gateway_upstream_response_seconds",
            "Seconds from sending a request upstream to its response headers.",
            buckets=LATENCY_BUCKETS, registry=own,
        )
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._shared_gauges: list[tuple[Gauge, Callable[[], float]]] = []

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
        """Add a gauge of this process's `function`, summed over workers in shared mode.

        Without shared files the value is read at each scrape. In shared mode it is
        written to the files now and at each `refresh`.
        """
        if self.shared_dir is None:
            self.registry.register(_ScrapeTimeGauge(name, documentation, function))
            return
        # "livesum" adds up the workers' values, and the parent removes the file
        # of a worker that exited (multiprocess.mark_process_dead).
        gauge = Gauge(name, documentation, registry=None, multiprocess_mode="livesum")
        gauge.set(function())
        self._shared_gauges.append((gauge, function))

    def refresh(self) -> None:
        """Write the current value of each watched gauge to the shared files."""
        for gauge, function in self._shared_gauges:
            gauge.set(function())

    def watch_certificate(self, cert_path: Path) -> None:
        """Add the seconds until the leaf certificate in `cert_path` expires.

        The gauge is read at scrape time by the process that serves `/metrics`, so it
        appears once however many workers run. The file is read again when its
        inode, size or mtime changes, so that the gauge follows a reload or renewal.
        While the file cannot be read, the gauge keeps the previous expiry.
        """
        self.registry.register(
            _ScrapeTimeGauge(
                "gateway_certificate_expiry_seconds",
                "Seconds until the served leaf certificate expires (negative once expired).",
                _CertificateExpiry(cert_path).seconds_left,
            )
        )


class _CertificateExpiry:
    """The expiry of the leaf in a certificate file, read again when the file changes."""

    def __init__(self, cert_path: Path) -> None:
        self.cert_path = cert_path
        self._state: tuple[int, int, int] | None = None
        self._not_after = self._read()

    def _read(self) -> datetime.datetime:
        info = os.stat(self.cert_path)
        not_after = certs.load_certs(self.cert_path)[0].not_valid_after_utc
        self._state = (info.st_ino, info.st_size, info.st_mtime_ns)
        return not_after

    def seconds_left(self) -> float:
        try:
            info = os.stat(self.cert_path)
            if (info.st_ino, info.st_size, info.st_mtime_ns) != self._state:
                self._not_after = self._read()
        except (OSError, CertificateError) as exc:
            log.debug("Kept the previous certificate expiry: reading %s failed: %s", self.cert_path, exc)
        return (self._not_after - datetime.datetime.now(datetime.timezone.utc)).total_seconds()


class MetricsListener:
    """The plain-HTTP listener that serves GET /metrics.

    `sock` is a socket already bound and listening on `listener`. The parent of the
    workers binds it, so that port 0 resolves once and the port stays open while
    the serving worker restarts. Without it, `start` binds the address.
    """

    def __init__(self, metrics: Metrics, listener: Listener, sock: socket.socket | None = None):
        self.metrics = metrics
        self.listener = listener
        self.sock = sock
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def _serve(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        # bind_listener turns a busy or unavailable address into a one-line ConfigError.
        sock = self.sock if self.sock is not None else bind_listener(self.listener)
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


def _attach(gateway, cert_path: Path, shared_dir: Path | None = None) -> Metrics:
    metrics = Metrics(shared_dir)
    metrics.watch(
        "gateway_open_connections", "Client connections open now.", lambda: gateway.open_connections
    )
    metrics.watch(
        "gateway_requests_in_flight", "Requests being proxied now.", lambda: gateway.proxy.in_flight
    )
    metrics.watch_certificate(cert_path)
    return metrics


async def start(gateway, cert_path: Path) -> MetricsListener | None:
    """Attach metrics to a started gateway and open its listener, when configured."""
    config = gateway.config
    if config.metrics_listen is None:
        return None
    metrics = _attach(gateway, cert_path)
    listener = MetricsListener(metrics, config.metrics_listen)
    await listener.start()
    gateway.proxy.metrics = metrics
    return listener


class WorkerMetrics:
    """A worker's part of the shared metrics: its gauge refresh task and maybe the listener."""

    def __init__(self, metrics: Metrics, listener: MetricsListener | None) -> None:
        self.metrics = metrics
        self.listener = listener
        self._task = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(SHARED_REFRESH)
            self.metrics.refresh()

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        if self.listener is not None:
            await self.listener.close()


async def start_worker(
    gateway, cert_path: Path, shared_dir: Path, sock: socket.socket | None
) -> WorkerMetrics:
    """Count a worker's requests into `shared_dir`; serve `/metrics` on `sock` when given."""
    metrics = _attach(gateway, cert_path, shared_dir)
    listener = None
    if sock is not None:
        listener = MetricsListener(metrics, gateway.config.metrics_listen, sock)
        await listener.start()
    gateway.proxy.metrics = metrics
    return WorkerMetrics(metrics, listener)
