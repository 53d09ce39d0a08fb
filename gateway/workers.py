"""`workers = N`: N gateway processes serving the same listen addresses.

The gateway keeps no state between requests (upload sessions live in the
registry), so any process can serve any request. Each worker is a forked copy of
`serve` with its own event loop, upstream connection pool and listening socket,
bound with SO_REUSEPORT so that the kernel spreads new connections across the
workers (Linux 3.9 and later balance connections between such sockets). The
parent binds every address first, without listening, so that port 0 resolves to
one port for all workers and the port stays reserved while workers restart. It
then forks the workers, forwards SIGTERM, SIGINT and SIGHUP to them, and
replaces a worker that dies.

Each worker reloads its own certificate on SIGHUP and when the files change.
Only worker 1 renews the gateway's own leaf, so that two processes never
rewrite the pair at once. The supervisor starts a replacement for a worker only
after it has reaped the old one, so worker 1 is one process at any time. The
other workers pick the renewed files up with their file-change poll. With
`metrics_listen`, the parent binds the metrics address and creates a private
folder for the shared counters (see `gateway.metrics`), and worker 1 serves
`/metrics` with the sums over all workers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import multiprocess

from gateway import eventloop, metrics
from gateway.config import Config, Listener
from gateway.errors import ConfigError, GatewayError
from gateway.server import Gateway, bind_listener
from gateway.status import TrustInfo, warn_if_upstream_down
from gateway.tlsreload import CertificateReloader

log = logging.getLogger("gateway.server")

READY_TIMEOUT = 30.0
RESTART_DELAY = 1.0
# The worker that renews the gateway's own leaf and serves /metrics.
LEAD_WORKER = 1
# Windows has no SIGHUP, and check_platform stops workers there before any use.
FORWARDED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)

# A function that loads the serving pair for one worker. Its argument is True
# for the worker that renews a leaf from the gateway's own CA.
MakeReloader = Callable[[bool], CertificateReloader]


def check_platform() -> None:
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError(
            f"workers above 1 need SO_REUSEPORT with load balancing, which this platform "
            f"({sys.platform}) does not have: set workers = 1 and run one gateway per "
            "port behind a load balancer."
        )


def reserve_ports(config: Config) -> tuple[Config, list[socket.socket]]:
    """Bind each listener once with SO_REUSEPORT; return a config with the bound ports."""
    sockets, listeners = [], []
    for listener in config.listen:
        sock = bind_listener(listener, reuse_port=True, listen=False)
        sockets.append(sock)
        listeners.append(Listener(listener.host, sock.getsockname()[1]))
    return dataclasses.replace(config, listen=listeners), sockets


@dataclasses.dataclass
class _Shared:
    """Resources that the parent prepares once and every worker inherits."""

    make_reloader: MakeReloader
    trust: TrustInfo | None = None
    # The folder of the shared metric files and the bound metrics socket, with
    # metrics_listen set.
    metrics_dir: Path | None = None
    metrics_sock: socket.socket | None = None


def run(
    config: Config,
    make_reloader: MakeReloader,
    announce: Callable[[list[str]], None],
    trust: TrustInfo | None = None,
) -> int:
    """Fork `config.workers` workers, supervise them until a signal, and return 0."""
    check_platform()
    config, reserved = reserve_ports(config)
    shared = _Shared(make_reloader, trust)
    supervisor = _Supervisor(config, shared)
    try:
        if config.metrics_listen is not None:
            shared.metrics_sock = bind_listener(config.metrics_listen)
            shared.metrics_dir = Path(tempfile.mkdtemp(prefix="registry-gateway-metrics-"))
        supervisor.start_all()
        announce([str(listener) for listener in config.listen])
        return supervisor.wait()
    finally:
        supervisor.terminate()
        for sock in reserved:
            sock.close()
        if shared.metrics_sock is not None:
            shared.metrics_sock.close()
        if shared.metrics_dir is not None:
            shutil.rmtree(shared.metrics_dir, ignore_errors=True)


class _Supervisor:
    def __init__(self, config: Config, shared: _Shared):
        self.config = config
        self.shared = shared
        self.workers: dict[int, int] = {}
        self.stopping = False

    def start_all(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        pending = {}
        for number in range(1, self.config.workers + 1):
            pid, ready = self._fork(number)
            pending[ready] = (number, pid)
        deadline = time.monotonic() + READY_TIMEOUT
        while pending:
            readable, _, _ = select.select(list(pending), [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                raise GatewayError(
                    f"{len(pending)} of {self.config.workers} workers did not start listening "
                    f"within {READY_TIMEOUT:.0f} s."
                )
            for fd in readable:
                number, pid = pending.pop(fd)
                message = os.read(fd, 4096).decode(errors="replace").strip()
                os.close(fd)
                if message != "ready":
                    raise GatewayError(
                        message.removeprefix("Error: ")
                        or f"Worker {number} (pid {pid}) exited before it listened."
                    )

    def _fork(self, number: int, report_ready: bool = True) -> tuple[int, int | None]:
        """Fork worker `number`; return its pid and the pipe it reports readiness on."""
        read_end, write_end = os.pipe() if report_ready else (None, None)
        # A signal that reached the child before it replaced the parent's handlers
        # would run them there and signal its siblings. So the signals stay
        # blocked across the fork, and the child unblocks them in _worker_main.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            raise
        if pid == 0:  # pragma: no cover - runs in the child, seen through its exit status.
            # The child must never return into the parent's code below, whose
            # cleanup would stop the other workers, so every path ends in _exit.
            code = 1
            try:
                if read_end is not None:
                    os.close(read_end)
                code = _worker_main(self.config, self.shared, number, write_end)
            except BaseException:
                log.exception("Worker %d failed", number)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if write_end is not None:
            os.close(write_end)
        self.workers[pid] = number
        log.debug("Started worker %d (pid %d)", number, pid)
        return pid, read_end

    def _on_signal(self, signum, _frame) -> None:
        self.stopping = True
        self._signal_workers(signal.SIGTERM)

    def _on_hangup(self, _signum, _frame) -> None:
        # Each worker reloads its certificate; one starting now loads the files anyway.
        self._signal_workers(signal.SIGHUP)

    def _signal_workers(self, signum: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _forget(self, pid: int) -> int | None:
        """Drop a reaped worker and its live gauge files; return its number."""
        if self.shared.metrics_dir is not None:
            multiprocess.mark_process_dead(pid, str(self.shared.metrics_dir))
        return self.workers.pop(pid, None)

    def wait(self) -> int:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            number = self._forget(pid)
            if number is None or self.stopping:
                continue
            log.warning(
                "Worker %d (pid %d) exited with status %d; starting a new one in %.0f s",
                number, pid, os.waitstatus_to_exitcode(status), RESTART_DELAY,
            )
            time.sleep(RESTART_DELAY)
            if not self.stopping:
                self._fork(number, report_ready=False)
        log.info("Stopped all workers")
        return 0

    def terminate(self) -> None:
        """Stop workers still running when the parent leaves early (a failed start)."""
        self.stopping = True
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self._forget(pid)


def _worker_main(config: Config, shared: _Shared, number: int, ready_fd: int | None) -> int:  # pragma: no cover
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    # SIGHUP is ignored until the event loop handles it. The worker reads the
    # certificate files after this point, and its file poll notices a change
    # made before the handler is in place.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
    for handler in logging.getLogger("gateway").handlers:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s %(name)s (worker {number}): %(message)s")
        )
    try:
        return eventloop.run(_serve_worker(config, shared, number, ready_fd), config.event_loop)
    except GatewayError as exc:
        if ready_fd is None:
            log.error("Worker %d failed to start: %s", number, exc)
        else:
            os.write(ready_fd, f"Error: {exc}".encode())
        return 1


async def _serve_worker(config: Config, shared: _Shared, number: int, ready_fd: int | None) -> int:  # pragma: no cover
    lead = number == LEAD_WORKER
    reloader = shared.make_reloader(lead)
    gateway = Gateway(config, reloader.context, shared.trust)
    await gateway.start()
    reloader.attach(gateway)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reloader.reload_on_signal)
    worker_metrics = None
    if shared.metrics_dir is not None:
        sock = shared.metrics_sock if lead else None
        worker_metrics = await metrics.start_worker(gateway, reloader.cert_path, shared.metrics_dir, sock)
    if ready_fd is not None:
        os.write(ready_fd, b"ready")
        os.close(ready_fd)
    check = None
    if lead:
        # One worker checks the registry, so that a start-up logs the result once.
        check = loop.create_task(warn_if_upstream_down(gateway.proxy.session, config.upstream))

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    if check is not None:
        check.cancel()
    await reloader.stop()
    await gateway.stop()
    if worker_metrics is not None:
        await worker_metrics.close()
    return 0
