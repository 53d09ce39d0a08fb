"""Real parts on loopback for the demo, the tests and the benchmark.

`RegistryProcess` runs the CNCF distribution registry (Debian's `docker-registry`
binary) with a config written to a temporary folder; `GatewayProcess` runs
`python -m gateway serve` as a user would; `build_oci_layout` writes a small
multi-layer OCI image that `skopeo copy oci:DIR:TAG docker://...` can push.
Every server here binds to a loopback address.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REGISTRY_BINARY = "docker-registry"
START_TIMEOUT = 20.0

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port the OS reports free on `host` (a race remains until it is bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class RegistryProcess:
    """The distribution registry on a loopback port, storage in a temporary folder."""

    host: str = "127.0.0.1"
    port: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    htpasswd: Path | None = None
    extra_http: dict = field(default_factory=dict)
    workdir: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return _authority(self.host, self.port)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{self.address}"

    def config_text(self) -> str:
        assert self.workdir is not None
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {json.dumps(str(self.workdir / 'data'))}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {json.dumps(self.address)}",
            f"  secret: lab-secret-{os.getpid()}",
        ]
        for key, value in self.extra_http.items():
            lines.append(f"  {key}: {json.dumps(value)}")
        if self.tls_cert:
            lines += [
                "  tls:",
                f"    certificate: {json.dumps(str(self.tls_cert))}",
                f"    key: {json.dumps(str(self.tls_key))}",
            ]
        if self.htpasswd:
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: lab-realm",
                f"    path: {json.dumps(str(self.htpasswd))}",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> "RegistryProcess":
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None:
            raise RuntimeError(
                "The distribution registry is not installed: run "
                "'apt-get install docker-registry' as root."
            )
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="lab-registry-"))
        if self.port == 0:
            self.port = free_port(self.host)
        config = self.workdir / "config.yml"
        config.write_text(self.config_text())
        if getattr(self, "_log", None):
            self._log.close()
        self._log = open(self.workdir / "registry.log", "wb")
        self.process = subprocess.Popen(
            [binary, "serve", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.host, self.port, self.process, self.workdir / "registry.log")
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log_text(self) -> str:
        assert self.workdir is not None
        return (self.workdir / "registry.log").read_text(errors="replace")


def wait_for_port(host: str, port: int, process: subprocess.Popen, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace") if log_path else ""
            raise RuntimeError(f"process exited with {process.returncode} before listening:\n{log}")
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {_authority(host, port)} within {START_TIMEOUT} s")


LISTENING = re.compile(r"^Listening on https://(\S+) -> ", re.MULTILINE)


@dataclass
class GatewayProcess:
    """`python -m gateway serve ...` in a subprocess, as a user runs it."""

    args: list[str]
    cwd: Path | None = None
    env: dict | None = None
    process: subprocess.Popen | None = None
    addresses: list[str] = field(default_factory=list)
    output: str = ""

    def start(self) -> "GatewayProcess":
        self._out = tempfile.NamedTemporaryFile(prefix="gateway-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = Path(self._out.name).read_text(errors="replace")
            found = LISTENING.findall(text)
            if found:
                self.addresses = found
                self.output = text
                return self
            if self.process.poll() is not None:
                self._remove_log()
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("gateway did not report a listener in time:\n" + self.output)

    @property
    def port(self) -> int:
        return int(self.addresses[0].rsplit(":", 1)[1])

    def read_output(self) -> str:
        """Return the output so far; after `stop`, the output kept when the log was removed."""
        try:
            return Path(self._out.name).read_text(errors="replace")
        except FileNotFoundError:
            return self.output

    def _remove_log(self) -> None:
        self.output = self.read_output()
        self._out.close()
        Path(self._out.name).unlink(missing_ok=True)

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._remove_log()
        return self.process.returncode


def _blob(folder: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = folder / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """Build a gzipped tar of `files` with fixed times; return it and its uncompressed digest."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    uncompressed = raw.getvalue()
    compressed = gzip.compress(uncompressed, compresslevel=1, mtime=0)
    return compressed, "sha256:" + hashlib.sha256(uncompressed).hexdigest()


def build_oci_layout(
    folder: Path, tag: str = "v1", layer_sizes: tuple[int, ...] = (1024, 4096, 16384), seed: int = 1
) -> str:
    """Write an OCI image layout with one layer per size; return the manifest digest.

    Layer contents come from a seeded generator, so they do not compress and every
    seed gives different blobs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers, diff_ids = [], []
    for index, size in enumerate(layer_sizes):
        content = _random_bytes(size, seed * 1000 + index)
        compressed, diff_id = _layer({f"layer{index}/data.bin": content})
        layers.append({"mediaType": OCI_LAYER, **_blob(folder, compressed)})
        diff_ids.append(diff_id)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/layer0/data.bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_desc = {"mediaType": OCI_CONFIG, **_blob(folder, json.dumps(config).encode())}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc,
        "layers": layers,
    }
    manifest_bytes = json.dumps(manifest).encode()
    manifest_desc = _blob(folder, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                **manifest_desc,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (folder / "index.json").write_text(json.dumps(index))
    return manifest_desc["digest"]


def _random_bytes(size: int, seed: int) -> bytes:
    """Return `size` incompressible bytes from SHAKE-256 of the seed and a counter, 1 MiB a step."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    counter = 0
    while len(out) < size:
        chunk = hashlib.shake_256(block + counter.to_bytes(8, "big")).digest(min(1 << 20, size - len(out)))
        out += chunk
        counter += 1
    return bytes(out)


def skopeo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run skopeo with a private, empty policy that accepts any image (loopback tests only)."""
    if shutil.which("skopeo") is None:
        raise RuntimeError("skopeo is not installed: run 'apt-get install skopeo' as root.")
    policy = Path(tempfile.gettempdir()) / "registry-gateway-skopeo-policy.json"
    if not policy.exists():
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return subprocess.run(
        ["skopeo", "--policy", str(policy), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def skopeo_error(result: subprocess.CompletedProcess) -> str:
    """Return the `msg=` text of skopeo's fatal line, unquoted, or else the last stderr line."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    match = re.search(r'level=fatal msg="((?:[^"\\]|\\.)*)"', last)
    if match:
        return json.loads(f'"{match.group(1)}"')
    return last


def http_get(url: str, timeout: float = 5.0, context=None) -> tuple[int, dict, bytes]:
    """A plain urllib GET that returns status, headers and body, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
