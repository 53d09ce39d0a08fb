"""A real dockerd for tests, in a private mount namespace.

The daemon runs as root under `unshare -m` with its own `/etc/docker` and
`/etc/hosts` bind-mounted from a temporary folder, vfs storage, no bridge and no
iptables, and listens on a unix socket in that folder. Nothing on the host's
`/etc` changes.

dockerd treats 127.0.0.0/8 as insecure (HTTPS without verification, then plain
HTTP), which would hide every TLS problem. So the private /etc/hosts maps the
test name `registry.test` to `::1`: a registry or gateway listening on `[::1]`
and reached as `registry.test:PORT` is verified like a remote one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from gateway import lab

TEST_NAME = "registry.test"
TEST_ADDRESS = "::1"
START_TIMEOUT = 60.0
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
# The Debian docker CLI matches the Debian dockerd (20.10); a newer CLI elsewhere
# on PATH may speak an API version this daemon does not.
DOCKER_CLI = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")


def unavailable_reason() -> str | None:
    """Why this run cannot start a dockerd, or None when it can."""
    if os.geteuid() != 0:
        return "dockerd tests need root (unshare -m and bind mounts)"
    if not os.path.exists(DOCKERD):
        return "dockerd is not installed: apt-get install docker.io"
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "dockerd tests need unshare and nsenter (util-linux)"
    return None


class Dockerd:
    """One dockerd with a private /etc/docker, /etc/hosts and unix socket."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.etc_docker = workdir / "etc-docker"
        self.daemon_json = self.etc_docker / "daemon.json"
        self.hosts = workdir / "hosts"
        self.socket = workdir / "docker.sock"
        self.log_path = workdir / "dockerd.log"
        self.cli_config = workdir / "cli"
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> "Dockerd":
        self.etc_docker.mkdir(parents=True, exist_ok=True)
        (self.etc_docker / "certs.d").mkdir(exist_ok=True)
        if not self.daemon_json.exists():
            self.daemon_json.write_text("{}\n")
        self.hosts.write_text(
            "127.0.0.1\tlocalhost\n::1\tip6-localhost\n"
            f"{TEST_ADDRESS}\t{TEST_NAME}\n"
        )
        self.cli_config.mkdir(exist_ok=True)
        (self.cli_config / "config.json").write_text("{}\n")
        root, exec_root = self.workdir / "root", self.workdir / "exec"
        root.mkdir(exist_ok=True)
        exec_root.mkdir(exist_ok=True)
        daemon = " ".join(
            [
                DOCKERD,
                "--config-file /etc/docker/daemon.json",
                f"--data-root {root}",
                f"--exec-root {exec_root}",
                f"--pidfile {self.workdir / 'dockerd.pid'}",
                f"--host unix://{self.socket}",
                "--storage-driver vfs",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--userland-proxy=false",
            ]
        )
        script = (
            f"mount --make-rprivate / && "
            f"mount --bind {self.etc_docker} /etc/docker && "
            f"mount --bind {self.hosts} /etc/hosts && "
            f"exec {daemon}"
        )
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--", "sh", "-c", script],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"dockerd exited with {self.process.returncode}:\n{self.log_text()[-4000:]}"
                )
            if self.socket.exists() and self.docker("version", timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer within {START_TIMEOUT} s:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def docker(self, *args: str, timeout: float = 180, input: str | None = None) -> subprocess.CompletedProcess:
        """Run the docker CLI against this daemon; `input` goes to its standard input."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "DOCKER_CONFIG": str(self.cli_config),
            "DOCKER_HOST": f"unix://{self.socket}",
        }
        return subprocess.run(
            [DOCKER_CLI, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def run_in_namespace(self, *command: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        """Run a command in dockerd's mount namespace, where registry.test resolves."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "--", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )

    def load_image(self, layout: Path, ref: str, tag: str = "v1") -> None:
        """Load an OCI layout into the daemon under the name `ref`."""
        archive = self.workdir / f"image-{abs(hash((str(layout), ref)))}.tar"
        result = lab.skopeo("copy", f"oci:{layout}:{tag}", f"docker-archive:{archive}:{ref}")
        if result.returncode != 0:
            raise RuntimeError(f"skopeo could not write {archive}: {result.stderr}")
        loaded = self.docker("load", "-i", str(archive))
        archive.unlink()
        if loaded.returncode != 0:
            raise RuntimeError(f"docker load failed: {loaded.stderr}")

    def write_daemon_json(self, config: dict) -> None:
        self.daemon_json.write_text(json.dumps(config, indent=2) + "\n")

    def reload(self) -> None:
        """Send SIGHUP and wait until dockerd logs that it reloaded its configuration."""
        before = self.log_text().count("Reloaded configuration")
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = self.log_text()
            if text.count("Reloaded configuration") > before:
                return
            if text.count("Error reloading configuration") > before:
                raise RuntimeError("dockerd rejected the new configuration:\n" + text[-2000:])
            time.sleep(0.1)
        raise RuntimeError("dockerd did not log a reload within 15 s")

    def trust(self, host_port: str, ca_file: Path) -> Path:
        """Install `ca_file` as certs.d/HOST:PORT/ca.crt, as an operator would."""
        folder = self.etc_docker / "certs.d" / host_port
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "ca.crt"
        shutil.copy(ca_file, target)
        return target

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def last_line(result: subprocess.CompletedProcess) -> str:
    """The last non-empty line the docker CLI printed, on stderr or stdout."""
    lines = [l for l in (result.stderr + "\n" + result.stdout).splitlines() if l.strip()]
    err_lines = [l for l in result.stderr.splitlines() if l.strip()]
    return (err_lines or lines or [""])[-1]


@pytest.fixture(scope="session")
def dockerd():
    """A real dockerd for the session; tests write their own certs.d folders by host:port."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="test-dockerd-", dir="/var/tmp"))
    daemon = Dockerd(workdir).start()
    yield daemon
    daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)
