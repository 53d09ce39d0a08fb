"""Certificates and small servers for the probe tests: one per verdict, all on loopback."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
)

from gateway import certs, lab, probe

DAY = datetime.timedelta(days=1)


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str, issuer: Issued | None = None) -> Issued:
    """A CA certificate, self-signed or issued by `issuer` (an intermediate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = certs.now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    )
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def make_leaf(
    issuer: Issued | None,
    names: list[str],
    common_name: str = "probe-test",
    not_after: datetime.datetime | None = None,
    ca_issuers_url: str = "",
) -> Issued:
    """A server leaf for `names` (no SAN extension when empty), self-signed when `issuer` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = certs.now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - 2 * DAY)
        .not_valid_after(not_after or now + 30 * DAY)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    )
    if names:
        entries = []
        for name in names:
            try:
                entries.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                entries.append(x509.DNSName(name))
        builder = builder.add_extension(
            x509.SubjectAlternativeName(entries), critical=False
        )
    if ca_issuers_url:
        access = x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS,
            x509.UniformResourceIdentifier(ca_issuers_url),
        )
        builder = builder.add_extension(
            x509.AuthorityInformationAccess([access]), critical=False
        )
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def write_pair(folder: Path, chain: list[x509.Certificate], key) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    certs.write_certs(cert_path, chain)
    certs.write_key(key_path, key)
    return cert_path, key_path


def write_trust(folder: Path, cert: x509.Certificate) -> Path:
    """A folder holding `ca.crt`, as skopeo's --cert-dir expects."""
    folder.mkdir(parents=True, exist_ok=True)
    certs.write_certs(folder / "ca.crt", [cert])
    return folder


def write_htpasswd(
    path: Path, user: str = "probe", password: str = "probe-password"
) -> Path:
    """An htpasswd file with one bcrypt entry, the only hash the distribution registry accepts."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{user}:{hashed}\n")
    return path


def run_probe(
    target: str,
    *,
    ca: list[Path] = (),
    cert_dir: Path | None = None,
    client: str = "all",
    image: str = "rig/test:v1",
    push_check: bool = False,
) -> probe.Report:
    """Run the probe in-process with no system CA store, as the tests' clients trust none."""
    repository, _, tag = image.partition(":")
    options = probe.Options(
        ca_files=list(ca),
        cert_dir=cert_dir,
        client=client,
        timeout=3.0,
        system_trust=False,
        repository=repository,
        tag=tag,
        push_check=push_check,
    )
    return probe.run(probe.parse_target(target), options)


def prediction(report: probe.Report, client: str):
    return next(p for p in report.clients if p.client == client)


SKOPEO_PREFIX = re.compile(r'^Error parsing image name "docker://[^"]+": ')
CLOCK = re.compile(r"current time \S+ is")


def skopeo_inspect(reference: str, cert_dir: Path | None = None) -> str:
    """skopeo's error for `inspect docker://REFERENCE`, without its image-name prefix."""
    args = ["inspect"]
    if cert_dir is not None:
        args += ["--cert-dir", str(cert_dir)]
    result = lab.skopeo(*args, f"docker://{reference}", timeout=60)
    assert result.returncode != 0, f"skopeo inspect succeeded: {result.stdout[:200]}"
    return SKOPEO_PREFIX.sub("", lab.skopeo_error(result))


def without_clock(text: str) -> str:
    """Drop Go's current-time value, which moves between the probe and the client."""
    return CLOCK.sub("current time <now> is", text)


def cli(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run `registry-gateway probe ARGS` as a subprocess; return exit status, stdout, stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "probe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin or "",
    )
    return result.returncode, result.stdout, result.stderr


class ThreadedApp:
    """An aiohttp app on a loopback port, served from a background thread."""

    def __init__(self, app: web.Application, ssl_context=None, host: str = "127.0.0.1"):
        self.app, self.ssl_context, self.host = app, ssl_context, host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self.ssl_context)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> "ThreadedApp":
        self._thread.start()
        assert self._ready.wait(10), "the test server did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def http_server(folder: Path, host: str = "127.0.0.1") -> subprocess.Popen:
    """`python -m http.server` on a free loopback port: a web server that is not a registry."""
    port = lab.free_port(host)
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", host, str(port)],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    lab.wait_for_port(host, port, process)
    process.port = port
    return process


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def have_skopeo() -> bool:
    return shutil.which("skopeo") is not None


class RawServer:
    """A loopback TCP server that misbehaves on purpose: close, reset, silence or a banner."""

    def __init__(self, behaviour: str, ssl_context=None, max_connections: int = 20):
        self.behaviour, self.ssl_context = behaviour, ssl_context
        self.max_connections = max_connections
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        served = 0
        while not self._stop.is_set() and served < self.max_connections:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            served += 1
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        if self.behaviour in ("close", "reset"):
            # Read the ClientHello first, so the client has connected and waits for a
            # reply; closing with unread data would send a reset instead of a close.
            conn.settimeout(2)
            try:
                conn.recv(65536)
            except OSError:
                pass
            if self.behaviour == "reset":
                linger = struct.pack("ii", 1, 0)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            conn.close()
        elif self.behaviour == "banner":
            conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
            conn.close()
        elif self.behaviour == "bad-certificate-alert":
            # The alert Go's servers send a client without a certificate, as the
            # first record: level fatal (2), description bad_certificate (42).
            conn.settimeout(2)
            try:
                conn.recv(65536)
                conn.sendall(b"\x15\x03\x03\x00\x02\x02\x2a")
            except OSError:
                pass
            conn.close()
        elif self.behaviour == "tls-alert":
            conn.settimeout(2)
            try:
                tls = self.ssl_context.wrap_socket(conn, server_side=True)
                tls.close()
            except (ssl.SSLError, OSError):
                conn.close()
        else:  # silent: keep the connection open and send nothing
            self._open.append(conn)

    def __enter__(self) -> "RawServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._open:
            conn.close()
        self.sock.close()
