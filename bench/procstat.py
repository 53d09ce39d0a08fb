"""Per-process CPU time, RSS and disk writes, read from /proc (Linux only).

A front-end is measured as its whole process tree: the nginx master and its
workers, the gateway and any worker processes it forks. CPU time is utime +
stime from /proc/PID/stat, RSS is VmRSS from /proc/PID/status, and disk writes
are write_bytes from /proc/PID/io. That counter counts page-cache bytes a process
dirties on a block device, so writes to tmpfs are not in it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL = 0.02


def tree_pids(root: int) -> list[int]:
    """Return `root` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name in field 2 may contain spaces; fields after ")" are fixed.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, ()))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields 14 and 15 of stat(5) are utime and stime; index 0 here is field 3.
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def write_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def folder_bytes(folders: list[Path]) -> int:
    total = 0
    for folder in folders:
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    continue
    return total


@dataclass
class Usage:
    """The CPU time, memory and disk writes of a process tree over one operation."""

    cpu_seconds: float
    rss_start: int
    rss_end: int
    rss_peak: int
    disk_write_bytes: int
    spool_peak_bytes: int

    @property
    def rss_growth(self) -> int:
        return self.rss_end - self.rss_start


class Meter:
    """Samples a process tree while an operation runs: `with Meter(pid) as m: ...`.

    RSS and the size of the spool folders are sampled every 20 ms on a thread;
    CPU and disk writes are read at the start and the end.
    """

    def __init__(self, root_pid: int, spool_folders: list[Path] = ()):
        self.root_pid = root_pid
        self.spool_folders = list(spool_folders)
        self.usage: Usage | None = None
        self._stop = threading.Event()

    def __enter__(self) -> "Meter":
        self._pids = tree_pids(self.root_pid)
        self._cpu = cpu_seconds(self._pids)
        self._writes = write_bytes(self._pids)
        self._rss_start = rss_bytes(self._pids)
        self._rss_peak = self._rss_start
        self._spool_peak = folder_bytes(self.spool_folders)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._rss_peak = max(self._rss_peak, rss_bytes(self._pids))
            if self.spool_folders:
                self._spool_peak = max(self._spool_peak, folder_bytes(self.spool_folders))

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        rss_end = rss_bytes(self._pids)
        self.usage = Usage(
            cpu_seconds=cpu_seconds(self._pids) - self._cpu,
            rss_start=self._rss_start,
            rss_end=rss_end,
            rss_peak=max(self._rss_peak, rss_end),
            disk_write_bytes=write_bytes(self._pids) - self._writes,
            spool_peak_bytes=max(self._spool_peak, folder_bytes(self.spool_folders)),
        )


def system_busy_fraction(seconds: float = 1.0) -> float:
    """Return the share of all CPUs busy over `seconds`, from /proc/stat."""

    def read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    total_start, idle_start = read()
    time.sleep(seconds)
    total_end, idle_end = read()
    total = total_end - total_start
    return 0.0 if total == 0 else 1 - (idle_end - idle_start) / total
