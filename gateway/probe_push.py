"""`probe --push-check`: start a blob upload, send one chunk, cancel it; check a manifest.

These checks find what breaks pushes behind a reverse proxy although `/v2/`
works: an upload `Location` that points at another port or at `http://` (the
registry builds it from the Host and X-Forwarded-* headers it receives), a
proxy body limit (nginx returns 413 for a chunk over `client_max_body_size`),
a proxy timeout (504), and a `Docker-Content-Digest` header that an
intermediate strips or alters.

The upload is started with `POST /v2/REPO/blobs/uploads/`, gets one PATCH of
CHUNK_SIZE bytes and is then cancelled with `DELETE`, as the distribution spec
allows, so no blob is stored. It needs push access to REPO without credentials.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
import time
import urllib.parse

from gateway import probe, probe_http
from gateway.probe import Finding, Report

# 2 MiB: twice nginx's default client_max_body_size of 1 MiB.
CHUNK_SIZE = 2 * 1024 * 1024
MAX_MANIFEST = 4 * 1024 * 1024
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def run(report: Report, options: probe.Options) -> None:
    """Run the upload and manifest checks over the transport the probe found."""
    if report.scheme not in ("https", "http") or not report.evidence.get("v2", {}).get(
        "is_registry"
    ):
        return
    if options.repository.startswith("<"):
        report.findings.append(
            Finding("Note", "The push check needs --image REPO[:TAG]; it was skipped.")
        )
        return
    check_upload(report, options)
    if options.tag and not options.tag.startswith("<"):
        check_manifest(report, options)


def _request(report: Report, options: probe.Options, path: str, **kwargs):
    target = report.target
    return probe_http.http_request(
        report.evidence["address"],
        target.host,
        target.port,
        report.scheme == "https",
        options.timeout,
        path,
        **kwargs,
    )


def location_problem(report: Report, location: str, request_url: str) -> str:
    """Describe how an upload Location leads the client away from the registry, or ''."""
    target = report.target
    absolute = urllib.parse.urljoin(request_url, location)
    parts = urllib.parse.urlsplit(absolute)
    default_port = 443 if parts.scheme == "https" else 80
    port = parts.port or default_port
    if report.scheme == "https" and parts.scheme == "http":
        return (
            f"Scheme downgrade in upload URL: the registry returned Location: "
            f"{location!r}. Some proxy hop sends X-Forwarded-Proto=http, or sends "
            "none; set X-Forwarded-Proto: https on the hop that terminates TLS, or put "
            "the gateway there."
        )
    if (parts.hostname or "").lower() != target.host.lower():
        return (
            f"The upload URL sends the client to {parts.hostname}:{port}, but you "
            f"connected to {target.authority}: Location: {location!r}. The proxy "
            "passes the wrong Host header (Apache: ProxyPreserveHost on)."
        )
    if port != target.port:
        return (
            f"The upload URL sends the client to port {port}, but you connected on "
            f"{target.port}: Location: {location!r}. The proxy drops the port from "
            "the Host header or X-Forwarded-Host; the gateway forwards both."
        )
    return ""


def check_upload(report: Report, options: probe.Options) -> None:
    """POST an upload, PATCH one chunk to its Location, then cancel it with DELETE."""
    started = time.monotonic()
    target = report.target
    path = f"/v2/{options.repository}/blobs/uploads/"
    request_url = f"{report.scheme}://{target.authority}{path}"
    upload: dict = {"url": request_url}
    report.evidence["upload"] = upload
    try:
        status, reason, headers, _ = _request(report, options, path, method="POST")
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        report.step(
            "upload",
            "failed",
            f"POST {request_url} failed: {probe_http.error_text(exc)}.",
            options.timeout,
            started,
        )
        return
    upload.update(status=status, location=headers.get("location", ""))
    if status == 401:
        detail = f"POST {request_url} returned 401: pushing needs credentials, so the upload check was skipped."
        report.step("upload", "skipped", detail, options.timeout, started)
        return
    if status != 202 or not upload["location"]:
        detail = f"POST {request_url} returned {status} {reason}, not 202 Accepted with a Location."
        report.step("upload", "failed", detail, options.timeout, started)
        report.findings.append(Finding("Error", detail))
        return

    problem = location_problem(report, upload["location"], request_url)
    if problem:
        report.findings.append(Finding("Error", problem))
        report.step("upload", "failed", problem, options.timeout, started)
        return
    send_chunk(report, options, urllib.parse.urljoin(request_url, upload["location"]))
    chunk_status = upload.get("chunk_status")
    status = "ok" if chunk_status == 202 else "failed"
    detail = (
        f"Upload started at {upload['location']}; a {CHUNK_SIZE}-byte PATCH "
        f"returned {chunk_status or upload.get('chunk_error')}."
    )
    report.step("upload", status, detail, options.timeout, started)


def send_chunk(report: Report, options: probe.Options, url: str) -> None:
    """PATCH one CHUNK_SIZE chunk, report a 413 or 504 reply, then DELETE the upload."""
    upload = report.evidence["upload"]
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Range", f"0-{CHUNK_SIZE - 1}"),
    ]
    try:
        status, _, reply_headers, reply = _request(
            report,
            options,
            path,
            method="PATCH",
            headers=headers,
            body=bytes(CHUNK_SIZE),
        )
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        upload["chunk_error"] = probe_http.error_text(exc)
        text = f"PATCH of a {CHUNK_SIZE}-byte chunk to {url} failed: {upload['chunk_error']}."
        report.findings.append(Finding("Error", text))
        return

    upload["chunk_status"] = status
    problem = chunk_problem(status, reply_headers.get("server", ""), reply)
    if problem:
        report.findings.append(Finding("Error", problem))

    try:
        _request(report, options, path, method="DELETE")
    except (OSError, http.client.HTTPException, ssl.SSLError):
        upload["cancel_failed"] = True


def chunk_problem(status: int, server: str, reply: bytes) -> str:
    """Explain a PATCH reply other than 202 Accepted, or return ''."""
    if status == 202:
        return ""
    if status == 413:
        return (
            "An intermediate proxy caps request bodies (HTML 413 from "
            f"{server or 'a proxy'!r}): a {CHUNK_SIZE}-byte chunk was rejected. In "
            "nginx set `client_max_body_size 0;` for the registry's server block, or "
            "route pushes through the gateway, which has no body limit."
        )
    if status == 504:
        return (
            f"A proxy timed out during the layer upload (504 after sending {CHUNK_SIZE} "
            "bytes): raise its request timeouts (nginx proxy_read_timeout and "
            "proxy_send_timeout), or push through the gateway, which has no "
            "total-duration limit."
        )
    text = reply.decode("utf-8", "replace")[:120]
    return f"PATCH of a {CHUNK_SIZE}-byte chunk returned {status}: {text!r}."


def check_manifest(report: Report, options: probe.Options) -> None:
    """GET the manifest and compare sha256(body) with Docker-Content-Digest."""
    started = time.monotonic()
    path = f"/v2/{options.repository}/manifests/{options.tag}"
    url = f"{report.scheme}://{report.target.authority}{path}"
    headers = [("Accept", ", ".join(MANIFEST_TYPES))]
    try:
        status, reason, reply_headers, body = _request(
            report, options, path, headers=headers, max_body=MAX_MANIFEST
        )
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        report.step(
            "manifest",
            "failed",
            f"GET {url} failed: {probe_http.error_text(exc)}.",
            options.timeout,
            started,
        )
        return
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    header = reply_headers.get("docker-content-digest", "")
    report.evidence["manifest"] = {
        "url": url,
        "status": status,
        "digest": digest,
        "header": header,
    }
    if status != 200:
        report.step(
            "manifest",
            "skipped",
            f"GET {url} returned {status} {reason}.",
            options.timeout,
            started,
        )
        return
    if header == digest:
        report.step(
            "manifest",
            "ok",
            f"GET {url}: Docker-Content-Digest matches {digest}.",
            options.timeout,
            started,
        )
        return
    if not header:
        text = f"The Docker-Content-Digest header is missing from GET {url}: stripped by an intermediate, so clients cannot check what they pulled (the body hashes to {digest})."
    else:
        text = f"The Docker-Content-Digest header of GET {url} is {header}, but the body hashes to {digest}: stripped or altered by an intermediate (a proxy that recompresses or rewrites bodies)."
    report.findings.append(Finding("Error", text))
    report.step("manifest", "failed", text, options.timeout, started)
