"""`registry-gateway probe`: find out what really listens on a registry port.

Theory of operation
-------------------
Registry clients (docker, containerd, podman, skopeo) are Go programs that dial
`https://HOST:PORT/v2/` first. Go's TLS client sends a ClientHello and reads the
first 5-byte record header back. Those bytes decide which error the user sees
(Go 1.19 `crypto/tls` `readRecordOrCCS` and `net/http` `send`):

- `\\x16 \\x03 ..`: a TLS handshake record. The port speaks TLS, so the leaf
  certificate decides: Go checks validity time first, then the name (SAN only,
  never the CN), then the chain to a trusted root, and prints the first failure.
- `\\x15 \\x03 ..`: a TLS alert. Go prints `remote error: tls: <alert>`.
- `HTTP/`: a plain-HTTP server answered the ClientHello with an HTTP error page.
  Go replaces the record error with `http: server gave HTTP response to HTTPS client`.
- any other first byte (an HTML page from a server that speaks HTTP/0.9, a banner):
  `tls: first record does not look like a TLS handshake`.
- the peer closes without a byte: `EOF`; it sends nothing: a handshake timeout.

Before that come name resolution (`dial tcp: lookup NAME on RESOLVER:53: no such
host`) and the TCP connect (`dial tcp ADDR: connect: connection refused`). After a
working transport comes `GET /v2/`: a registry answers 200, or 401 with a
`WWW-Authenticate` challenge, and sends `Docker-Distribution-Api-Version:
registry/2.0`. A Bearer challenge names a token realm, which clients dial the same
way, so the probe checks the realm's transport too.

The probe records one `Step` per stage, each with its own timeout, then picks one
verdict, and `gateway.clients` turns the evidence into each client's error text.
The modules: `probe_net` (resolve, connect), `probe_tls` (ClientHello, first
bytes, handshake), `probe_verify` (the chain in Go's order), `probe_http`
(`/v2/`, challenges, realms), `probe_push` (upload and digest checks),
`verdicts` (verdict and fixes), `clients` (client rules and messages),
`probe_explain` (pasted errors), `probe_local` and `probe_local_clients`
(client-side config audit) and `probe_cli` (the subcommand and its output).
The `--json` object is documented in docs/probe.md.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gateway.errors import GatewayError

# Verdicts, best to worst transport. The JSON `verdict` field carries these names.
TLS_OK = "TLS_REGISTRY_OK"
PLAIN_HTTP_REGISTRY = "PLAIN_HTTP_REGISTRY"
UNKNOWN_AUTHORITY = "UNKNOWN_AUTHORITY"
SELF_SIGNED = "SELF_SIGNED"
CHAIN_INCOMPLETE = "CHAIN_INCOMPLETE"
NAME_MISMATCH = "NAME_MISMATCH"
IP_SAN_MISSING = "IP_SAN_MISSING"
CN_ONLY = "LEGACY_CN_ONLY"
EXPIRED = "EXPIRED"
NOT_YET_VALID = "NOT_YET_VALID"
NOT_A_REGISTRY = "NOT_A_REGISTRY"
UPSTREAM_DOWN = "UPSTREAM_DOWN"
PLAINTEXT_NOT_HTTP = "PLAINTEXT_NOT_TLS"
TLS_ALERT = "TLS_ALERT"
CLOSED = "CLOSED_WITHOUT_REPLY"
RESET = "CONNECTION_RESET"
SILENT = "NO_REPLY"
AUTH_REALM_PROBLEM = "AUTH_REALM_PROBLEM"
CLIENT_CERT_REQUIRED = "CLIENT_CERTIFICATE_REQUIRED"
REFUSED = "CONNECTION_REFUSED"
UNREACHABLE = "UNREACHABLE"
TIMEOUT = "CONNECT_TIMEOUT"
UNRESOLVABLE = "UNRESOLVABLE"

VERDICT_TITLES = {
    TLS_OK: "TLS registry OK",
    PLAIN_HTTP_REGISTRY: "plain-HTTP registry",
    UNKNOWN_AUTHORITY: "certificate signed by an unknown CA",
    SELF_SIGNED: "self-signed certificate",
    CHAIN_INCOMPLETE: "certificate chain incomplete",
    NAME_MISMATCH: "certificate name mismatch",
    IP_SAN_MISSING: "certificate has no IP SAN",
    CN_ONLY: "certificate with a Common Name only, no SAN",
    EXPIRED: "certificate expired",
    NOT_YET_VALID: "certificate not yet valid",
    NOT_A_REGISTRY: "not a registry",
    UPSTREAM_DOWN: "registry front end up, its registry down",
    PLAINTEXT_NOT_HTTP: "plaintext service, not TLS",
    TLS_ALERT: "TLS alert from the server",
    CLOSED: "connection closed without a reply",
    RESET: "connection reset by the server",
    SILENT: "no reply to the TLS ClientHello",
    AUTH_REALM_PROBLEM: "auth realm problem",
    CLIENT_CERT_REQUIRED: "TLS client certificate required",
    REFUSED: "connection refused",
    UNREACHABLE: "address unreachable",
    TIMEOUT: "connect timed out",
    UNRESOLVABLE: "name does not resolve",
}

DEFAULT_PORT = 443


@dataclass
class Target:
    """The registry as written in an image reference: `host[:port]`."""

    host: str
    port: int
    port_given: bool = True

    @property
    def authority(self) -> str:
        """`host:port` in Go's `net.JoinHostPort` form (IPv6 in brackets)."""
        return join_host_port(self.host, self.port)

    @property
    def reference(self) -> str:
        """The registry part of an image reference, port left out when none was given."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port_given else host

    @property
    def is_ip(self) -> bool:
        return is_ip(self.host)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_target(text: str) -> Target:
    """Parse `HOST[:PORT]`, `[IPv6]:PORT` or a URL-ish `https://HOST:PORT/` into a Target."""
    value = text.strip()
    for scheme in ("https://", "http://"):
        if value.lower().startswith(scheme):
            value = value[len(scheme) :]
    value = value.split("/", 1)[0]
    if not value:
        raise GatewayError(
            f"Missing registry address in {text!r}: give HOST[:PORT], e.g. registry.local:5000."
        )
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif value.count(":") > 1:
        host, port_text = value, ""
    else:
        host, port_text = value, ""
    if not host:
        raise GatewayError(
            f"Missing host in {text!r}: give HOST[:PORT], e.g. registry.local:5000."
        )
    if not port_text:
        return Target(host=host, port=DEFAULT_PORT, port_given=False)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise GatewayError(
            f"Invalid port {port_text!r} in {text!r}: use a number from 1 to 65535."
        )
    return Target(host=host, port=int(port_text))


@dataclass
class Step:
    """One stage of the probe: what it did, how long it took and what came of it."""

    name: str
    status: str  # "ok", "failed" or "skipped"
    detail: str
    timeout_s: float
    duration_ms: float = 0.0
    go_error: str = ""


@dataclass
class Finding:
    """A remark beyond the verdict: a level (Error, Warning or Note) and a sentence."""

    level: str
    text: str


@dataclass
class Fix:
    """One way to fix the failure, best first; `side` is registry, gateway or client."""

    side: str
    text: str
    command: str = ""


@dataclass
class Options:
    """Command-line settings besides the target: trust, client selection, timeouts."""

    ca_files: list[Path] = field(default_factory=list)
    cert_dir: Path | None = None
    client: str = "all"
    timeout: float = 5.0
    system_trust: bool = True
    # The image the predicted messages name; placeholders unless --image is given.
    repository: str = "<repo>"
    tag: str = "<tag>"
    push_check: bool = False


@dataclass
class Report:
    """Everything the probe found; `to_json` is the documented `--json` object."""

    target: Target
    verdict: str = ""
    summary: str = ""
    side: str = ""
    scheme: str = ""
    go_error: str = ""
    steps: list[Step] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)
    clients: list = field(default_factory=list)
    repository: str = "<repo>"
    tag: str = "<tag>"
    push_check: bool = False

    @property
    def ok(self) -> bool:
        clients_ok = bool(self.clients) and all(c.ok for c in self.clients)
        return clients_ok and not any(f.level == "Error" for f in self.findings)

    def step(
        self,
        name: str,
        status: str,
        detail: str,
        timeout_s: float,
        started: float,
        go_error: str = "",
    ) -> Step:
        duration = round((time.monotonic() - started) * 1000, 1)
        step = Step(name, status, detail, timeout_s, duration, go_error)
        self.steps.append(step)
        return step

    def to_json(self) -> dict:
        return {
            "schema": 1,
            "target": {
                "host": self.target.host,
                "port": self.target.port,
                "authority": self.target.authority,
            },
            "verdict": self.verdict,
            "title": VERDICT_TITLES.get(self.verdict, self.verdict),
            "summary": self.summary,
            "side": self.side,
            "scheme": self.scheme,
            "go_error": self.go_error,
            "ok": self.ok,
            "steps": [asdict(s) for s in self.steps],
            "evidence": self.evidence,
            "clients": [asdict(c) for c in self.clients],
            "findings": [asdict(f) for f in self.findings],
            "fixes": [asdict(f) for f in self.fixes],
        }


def run(target: Target, options: Options) -> Report:
    """Probe `target` step by step and return the report with verdict and predictions."""
    from gateway import (
        clients,
        probe_http,
        probe_net,
        probe_tls,
        probe_verify,
        verdicts,
    )

    probe_verify.check_ca_files(options.ca_files)
    report = Report(target=target, repository=options.repository, tag=options.tag)
    addresses = probe_net.resolve(report, options.timeout)
    if addresses:
        sock, address = probe_net.connect(report, addresses, options.timeout)
        if sock is not None:
            report.evidence["address"] = address
            tls = probe_tls.probe_transport(report, sock, options)
            if tls.kind == "tls-handshake":
                probe_http.plain_http_on_tls_port(report, address, options.timeout)
            if tls.kind in ("tls-handshake", "http", "plaintext"):
                probe_http.get_v2(report, address, tls.kind == "tls-handshake", options)
    verdicts.decide(report, options)
    if options.push_check:
        from gateway import probe_push

        probe_push.run(report, options)
    clients.predict(report, options)
    report.fixes += verdicts.client_fixes(report, options)
    if not report.side and not report.ok:
        # The transport works, but a client fails for a rule of its own (ctr's plain
        # HTTP to loopback, which a client fix covers) or a --push-check finding
        # is an Error (the registry or the proxy in front of it).
        if any(not c.ok for c in report.clients):
            report.side = report.fixes[0].side if report.fixes else "client"
        else:
            report.side = "registry"
    return report
