"""`workers = N`: N gateway processes serving the same listen addresses.

The gateway keeps no state between requests (upload sessions live in the
registry), so any process can serve any request. Each worker is a forked copy of
`serve` with its own event loop, upstream connection pool and listening socket,
bound with SO_REUSEPORT so that the kernel spreads new connections across the
workers (Linux 3.9 and later balance connections between such sockets). The
parent binds every address first, without listening, so that port 0 resolves to
one port for all workers and the port stays reserved while workers restart. It
then forks the workers, forwards SIGTERM and SIGINT to them, and replaces a
worker that dies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import select
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable

from gateway import eventloop
from gateway.config import Config, Listener
from gateway.errors import ConfigError, GatewayError
from gateway.server import Gateway, bind_listener
from gateway.status import TrustInfo

log = logging.getLogger("gateway.server")

READY_TIMEOUT = 30.0
RESTART_DELAY = 1.0


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


def run(
    config: Config,
    make_context: Callable[[], ssl.SSLContext],
    announce: Callable[[list[str]], None],
    trust: TrustInfo | None = None,
) -> int:
    """Fork `config.workers` workers, supervise them until a signal, and return 0."""
    check_platform()
    config, reserved = reserve_ports(config)
    supervisor = _Supervisor(config, make_context, trust)
    try:
        supervisor.start_all()
        announce([str(listener) for listener in config.listen])
        return supervisor.wait()
    finally:
        supervisor.terminate()
        for sock in reserved:
            sock.close()


class _Supervisor:
    def __init__(self, config: Config, make_context: Callable[[], ssl.SSLContext], trust: TrustInfo | None = None):
        self.config = config
        self.make_context = make_context
        self.trust = trust
        self.workers: dict[int, int] = {}
        self.stopping = False

    def start_all(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
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
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, seen through its exit status.
            # The child must never return into the parent's code below, whose
            # cleanup would stop the other workers, so every path ends in _exit.
            code = 1
            try:
                if read_end is not None:
                    os.close(read_end)
                code = _worker_main(self.config, self.make_context, number, write_end, self.trust)
            except BaseException:
                log.exception("Worker %d failed", number)
            finally:
                os._exit(code)
        if write_end is not None:
            os.close(write_end)
        self.workers[pid] = number
        log.debug("Started worker %d (pid %d)", number, pid)
        return pid, read_end

    def _on_signal(self, signum, _frame) -> None:
        self.stopping = True
        for pid in self.workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            number = self.workers.pop(pid, None)
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
            self.workers.pop(pid, None)


def _worker_main(config: Config, make_context, number: int, ready_fd: int | None, trust: TrustInfo | None = None) -> int:  # pragma: no cover
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    for handler in logging.getLogger("gateway").handlers:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s %(name)s (worker {number}): %(message)s")
        )
    try:
        return eventloop.run(_serve_worker(config, make_context(), ready_fd, trust), config.event_loop)
    except GatewayError as exc:
        if ready_fd is None:
            log.error("Worker %d failed to start: %s", number, exc)
        else:
            os.write(ready_fd, f"Error: {exc}".encode())
        return 1


async def _serve_worker(config: Config, context: ssl.SSLContext, ready_fd: int | None, trust: TrustInfo | None = None) -> int:  # pragma: no cover
    gateway = Gateway(config, context, trust)
    await gateway.start()
    if ready_fd is not None:
        os.write(ready_fd, b"ready")
        os.close(ready_fd)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await gateway.stop()
    return 0
