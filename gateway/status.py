"""The gateway's own pages under `/_gateway/`: the CA certificate and a status page.

`/_gateway/` never collides with the registry API, which lives under `/v2/`.
Both pages are public data: the CA certificate is what clients must trust, and
the status page tells an operator how to make them trust it. They are served
before any authentication check, so a client can bootstrap its trust without
credentials or a client certificate.
"""

from __future__ import annotations

import asyncio
import datetime
import html
import logging
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gateway import certs
from gateway.client_paths import client_paths, registry_folder_name
from gateway.logs import RateLimitedLog

PREFIX = "/_gateway/"
log = logging.getLogger("gateway.server")
stale_log = RateLimitedLog(log)
UPSTREAM_CHECK_TIMEOUT = 3.0


@dataclass
class TrustInfo:
    """The certificate the gateway serves, and the CA clients must trust when the gateway has one."""

    leaf_path: Path
    ca_path: Path | None = None

    def ca_certificate(self) -> x509.Certificate | None:
        """Return the CA, but only while it signed the leaf being served.

        After `certs init --force` the folder contains a new CA while the running
        gateway still serves a leaf of the old one; offering the new CA then would
        give clients a file that fails to verify.
        """
        if self.ca_path is None or not self.ca_path.exists():
            return None
        ca = certs.load_certs(self.ca_path)[0]
        try:
            self.leaf_certificate().verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            stale_log.warning(
                "stale-ca",
                "The CA %s did not sign the certificate being served (%s); /_gateway/ offers "
                "no CA until they match. Reissue the leaf: registry-gateway certs issue NAMES --force",
                self.ca_path,
                self.leaf_path,
            )
            return None
        return ca

    def leaf_certificate(self) -> x509.Certificate:
        return certs.load_certs(self.leaf_path)[0]


def fingerprint_argument(ca: x509.Certificate) -> str:
    """Format the CA fingerprint as `registry-gateway trust --fingerprint` takes it: hex, no colons."""
    return certs.fingerprint(ca).replace(":", "").lower()


def trust_command(authority: str, ca: x509.Certificate) -> str:
    return (
        f"registry-gateway trust {authority} --fingerprint {fingerprint_argument(ca)} "
        "--for docker --install"
    )


async def upstream_state(session: aiohttp.ClientSession, base: str) -> str:
    try:
        async with asyncio.timeout(UPSTREAM_CHECK_TIMEOUT):
            async with session.get(base + "/v2/", allow_redirects=False) as response:
                await response.read()
                version = response.headers.get("Docker-Distribution-Api-Version", "")
                if response.status in (200, 401) and version == "registry/2.0":
                    return f"reachable: GET /v2/ answered {response.status}"
                return f"answering, but not like a registry: GET /v2/ gave {response.status}"
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        # Imported here: proxy imports this module.
        from gateway.proxy import upstream_error_text

        return f"not reachable: {upstream_error_text(exc)}"


async def warn_if_upstream_down(session: aiohttp.ClientSession, upstream) -> None:
    """Check the registry once at start-up, so a wrong --upstream shows before the first push."""
    state = await upstream_state(session, str(upstream).rstrip("/"))
    if state.startswith("reachable"):
        log.info("Upstream %s is %s", upstream, state)
        return
    log.warning(
        "Upstream %s is %s. The gateway starts anyway and returns 502 until the "
        "registry responds (the upstream URL is --upstream or upstream.url).",
        upstream,
        state,
    )


def _ca_response(trust: TrustInfo) -> web.Response:
    ca = trust.ca_certificate()
    if ca is None:
        return web.Response(
            status=404,
            text="This gateway serves a certificate it did not issue, so it has no CA to offer.\n",
        )
    return web.Response(
        body=certs.cert_pem(ca),
        content_type="application/x-pem-file",
        headers={"Content-Disposition": 'attachment; filename="ca.crt"', "Cache-Control": "no-cache"},
    )


def _client_instructions(authority: str, ca_url: str) -> list[tuple[str, str]]:
    linux = client_paths("docker", "linux").certs_dir
    windows = client_paths("docker", "windows").certs_dir
    podman = client_paths("podman", "linux").certs_dir
    containerd = client_paths("containerd", "linux").certs_dir
    windows_folder = registry_folder_name(authority, "windows")
    return [
        (
            "Docker on Linux",
            f"sudo mkdir -p {linux}/{authority}\n"
            f"sudo cp ca.crt {linux}/{authority}/ca.crt",
        ),
        (
            "Docker on Windows (PowerShell as administrator; the folder name has no colon)",
            f"New-Item -ItemType Directory -Force {windows}\\{windows_folder}\n"
            f"Copy-Item ca.crt {windows}\\{windows_folder}\\ca.crt\n"
            "Restart-Service docker",
        ),
        (
            f"containerd ({containerd}/{authority}/hosts.toml)",
            f'server = "https://{authority}"\n\n'
            f'[host."https://{authority}"]\n'
            '  capabilities = ["pull", "resolve", "push"]\n'
            f'  ca = "{containerd}/{authority}/ca.crt"',
        ),
        (
            "podman and skopeo",
            f"sudo mkdir -p {podman}/{authority}\n"
            f"sudo cp ca.crt {podman}/{authority}/ca.crt",
        ),
        ("Download the CA, then compare its SHA-256 fingerprint with the one registry-gateway serve printed on the gateway host (this page comes from the same server, so it cannot vouch for itself)", f"curl -fsSk -o ca.crt {ca_url}\nopenssl x509 -in ca.crt -noout -fingerprint -sha256"),
    ]


def render_status(authority: str, trust: TrustInfo, upstream: str, upstream_url: str) -> str:
    """Build the status page: plain HTML, no scripts, no external assets."""
    leaf = trust.leaf_certificate()
    ca = trust.ca_certificate()
    dns_names, addresses = certs.san_names(leaf)
    expires = leaf.not_valid_after_utc
    days_left = (expires - datetime.datetime.now(datetime.timezone.utc)).days
    ca_url = f"https://{authority}{PREFIX}ca.crt"
    e = html.escape

    rows = [
        ("Upstream registry", f"{upstream_url}: {upstream}"),
        ("Certificate names", ", ".join([*dns_names, *addresses]) or "none (no subjectAltName)"),
        ("Certificate expires", f"{expires:%A %d %B %Y %H:%M} UTC ({days_left} days left)"),
    ]
    if ca is not None:
        rows.append(("CA", ca.subject.rfc4514_string()))
        rows.append(("CA SHA-256 fingerprint", certs.fingerprint(ca)))
    table = "\n".join(f"<tr><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>" for k, v in rows)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>registry-gateway at {e(authority)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "th{text-align:left;padding-right:1em;vertical-align:top}"
        "pre{background:#f4f4f4;padding:.8em;white-space:pre-wrap;overflow-wrap:anywhere}</style>",
        "</head><body>",
        f"<h1>registry-gateway at https://{e(authority)}</h1>",
        f"<table>{table}</table>",
    ]
    if ca is not None:
        parts += [
            "<h2>Trust this gateway on a client</h2>",
            "<p>Run on each machine that pushes or pulls; it checks the fingerprint before writing "
            "anything. Take the fingerprint from the gateway host itself (registry-gateway serve "
            "prints it at start-up), not only from this page:</p>",
            f'<pre id="trust-command">{e(trust_command(authority, ca))}</pre>',
            f'<p>Or download <a href="{PREFIX}ca.crt">ca.crt</a> and install it by hand:</p>',
        ]
        for title, text in _client_instructions(authority, ca_url):
            parts += [f"<h3>{e(title)}</h3>", f"<pre>{e(text)}</pre>"]
    else:
        parts.append(
            "<p>This gateway serves a certificate it did not issue; clients trust it "
            "through the CA that signed it.</p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


async def handle(request: web.BaseRequest, authority: str, trust: TrustInfo | None, session, upstream_url: str) -> web.StreamResponse:
    """Serve a `/_gateway/` path."""
    path = request.path
    if trust is None:
        return web.Response(status=404, text="Not found\n")
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, headers={"Allow": "GET, HEAD"})
    if path == PREFIX.rstrip("/"):
        return web.Response(status=301, headers={"Location": PREFIX})
    if path == PREFIX + "ca.crt":
        return _ca_response(trust)
    if path == PREFIX:
        state = await upstream_state(session, upstream_url)
        page = render_status(authority, trust, state, upstream_url)
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-cache"})
    return web.Response(status=404, text="Not found\n")
