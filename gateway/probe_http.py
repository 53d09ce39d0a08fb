"""Probe steps 5 and 6: `GET /v2/`, the auth challenge and its realm, plain HTTP on a TLS port.

A registry responds to `/v2/` with 200, or 401 and a `WWW-Authenticate` challenge,
and sends `Docker-Distribution-Api-Version: registry/2.0` (distribution spec,
"API version check"). A Bearer challenge names a token realm that clients
fetch next, so its transport can fail where the registry's works.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import time
import urllib.parse

from gateway import probe, probe_tls
from gateway.probe import Report, join_host_port

MAX_BODY = 65536
API_VERSION_HEADER = "Docker-Distribution-Api-Version"
GO_TLS_PLAIN_REPLY = "Client sent an HTTP request to an HTTPS server."
NGINX_PLAIN_REPLY = "The plain HTTP request was sent to HTTPS port"
# registry-gateway's JSON error for plain HTTP on its TLS listener (gateway.server).
GATEWAY_PLAIN_REPLY = "this port speaks HTTPS only"
CHALLENGE_PARAM = re.compile(
    r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))'
)


def error_text(exc: Exception) -> str:
    """Describe a failed request in plain words, without errno or OpenSSL source tags.

    Python's texts such as `[Errno 104] Connection reset by peer` and
    `[SSL: ...] ... (_ssl.c:2580)` become `connection reset by peer` and the
    alert or reason in Go's words.
    """
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if "ALERT_" in reason.upper():
            return f"the server sent the TLS alert {probe_tls.alert_text(exc)!r}"
        if reason:
            return f"TLS failed: {reason.replace('_', ' ').lower()}"
        return f"TLS failed: {type(exc).__name__}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def parse_www_authenticate(value: str) -> tuple[str, dict[str, str]]:
    """Split a challenge such as `Bearer realm="https://a/token",service="x"` into scheme and params."""
    scheme, _, rest = value.strip().partition(" ")
    params = {}
    for match in CHALLENGE_PARAM.finditer(rest):
        quoted, bare = match.group(2), match.group(3)
        params[match.group(1).lower()] = (
            re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        )
    return scheme.lower(), params


def http_request(
    address: str,
    host: str,
    port: int,
    use_tls: bool,
    timeout: float,
    path: str = "/v2/",
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    max_body: int = MAX_BODY,
) -> tuple[int, str, dict, bytes]:
    """Send one request and return status, reason, headers (lower-case names) and body.

    The body is cut at `max_body` bytes. A server that responds before reading the
    whole request body (an early 413) still has its response read.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
        if use_tls:
            server_name = None if probe.is_ip(host) else host
            sock = probe_tls.client_hello_context().wrap_socket(
                sock, server_hostname=server_name
            )
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {join_host_port(host, port)}",
            "User-Agent: registry-gateway-probe",
            "Connection: close",
        ]
        names = {name.lower() for name, _ in headers or []}
        if "accept" not in names:
            lines.append("Accept: */*")
        lines += [f"{name}: {value}" for name, value in headers or []]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        try:
            sock.sendall(head + body)
        except ssl.SSLError as exc:
            # A TLS alert (such as certificate_required) is the server's answer,
            # and reading the response would turn it into a bare EOF.
            if "ALERT_" in (exc.reason or "").upper():
                raise
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        data = response.read(max_body) if method != "HEAD" else b""
        names_values = {name.lower(): value for name, value in response.getheaders()}
        return response.status, response.reason, names_values, data
    finally:
        sock.close()


def looks_like(headers: dict, body: bytes) -> str:
    """Describe a non-registry response in a few words: an HTML page, JSON, text."""
    content_type = headers.get("content-type", "")
    server = headers.get("server", "")
    kind = (
        "an HTML page"
        if "html" in content_type or body.lstrip()[:1] == b"<"
        else (
            "a JSON document"
            if "json" in content_type
            else f"a {content_type or 'untyped'} body"
        )
    )
    return kind + (f" from {server!r}" if server else "")


def get_v2(report: Report, address: str, use_tls: bool, options: probe.Options) -> None:
    """Step 5: `GET /v2/` over the transport step 3 found, then the challenge's realm."""
    target = report.target
    started = time.monotonic()
    scheme = "https" if use_tls else "http"
    url = f"{scheme}://{target.authority}/v2/"
    try:
        status, reason, headers, body = http_request(
            address, target.host, target.port, use_tls, options.timeout
        )
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        v2 = {"url": url, "error": error_text(exc)}
        if isinstance(exc, ssl.SSLError) and "ALERT_" in (exc.reason or "").upper():
            # A TLS 1.3 server checks the client certificate after the handshake,
            # so its alert arrives with the first read of the response.
            v2["tls_alert"] = probe_tls.alert_text(exc)
        detail = f"GET {url} failed: {v2['error']}."
        report.step("v2", "failed", detail, options.timeout, started)
        report.evidence["v2"] = v2
        return

    api_version = headers.get(API_VERSION_HEADER.lower(), "")
    is_registry = status in (200, 401) and api_version.startswith("registry/2")
    v2 = {
        "url": url,
        "status": status,
        "reason": reason,
        "api_version": api_version,
        "content_type": headers.get("content-type", ""),
        "server": headers.get("server", ""),
        "www_authenticate": headers.get("www-authenticate", ""),
        "is_registry": is_registry,
        "body": body[:4096].decode("utf-8", "replace"),
    }
    report.evidence["v2"] = v2
    if is_registry:
        detail = f"GET {url} returned {status} {reason} with {API_VERSION_HEADER}: {api_version}."
    elif api_version:
        detail = f"GET {url} returned {status} {reason} with {API_VERSION_HEADER}: {api_version}, so a registry front end answered but could not serve /v2/."
        v2["looks_like"] = looks_like(headers, body)
    else:
        detail = f"GET {url} returned {status} {reason} and {looks_like(headers, body)}, without {API_VERSION_HEADER}."
        v2["looks_like"] = looks_like(headers, body)
    report.step(
        "v2", "ok" if is_registry else "failed", detail, options.timeout, started
    )
    if status == 401 and v2["www_authenticate"]:
        check_realm(report, v2["www_authenticate"], options)


def plain_http_on_tls_port(report: Report, address: str, timeout: float) -> None:
    """Step 6: send plain HTTP to the TLS port and name the server by its reply."""
    target = report.target
    started = time.monotonic()
    try:
        status, reason, headers, body = http_request(
            address, target.host, target.port, False, timeout
        )
    except (OSError, http.client.HTTPException) as exc:
        detail = f"Plain HTTP to the TLS port got no HTTP reply ({error_text(exc)})."
        report.evidence["plain_http_reply"] = {
            "server": "unknown",
            "error": error_text(exc),
        }
        report.step("plain-http", "ok", detail, timeout, started)
        return
    text = body.decode("utf-8", "replace")
    if GO_TLS_PLAIN_REPLY in text:
        server = "go"
    elif NGINX_PLAIN_REPLY in text:
        server = "nginx"
    elif GATEWAY_PLAIN_REPLY in text:
        server = "registry-gateway"
    else:
        server = "other"
    report.evidence["plain_http_reply"] = {
        "server": server,
        "status": status,
        "reason": reason,
        "body": text[:200],
    }
    names = {
        "go": "a Go TLS server (such as the distribution registry)",
        "nginx": "nginx",
        "registry-gateway": "registry-gateway",
        "other": "a server",
    }
    report.step(
        "plain-http",
        "ok",
        f"Plain HTTP to the TLS port got {status} {reason} from {names[server]}: {text.strip()[:80]!r}.",
        timeout,
        started,
    )


def check_realm(report: Report, challenge: str, options: probe.Options) -> None:
    """Probe a Bearer realm's host the way a client fetching a token would."""
    from gateway import probe_net

    scheme, params = parse_www_authenticate(challenge)
    auth = {"scheme": scheme, "params": params}
    report.evidence["auth"] = auth
    if scheme != "bearer" or "realm" not in params:
        return
    started = time.monotonic()
    realm = urllib.parse.urlsplit(params["realm"])
    realm_target = probe.Target(
        host=realm.hostname or "",
        port=realm.port or (443 if realm.scheme == "https" else 80),
        port_given=realm.port is not None,
    )
    auth["realm_authority"] = realm_target.authority
    auth["token_url"] = token_url(
        params["realm"], params.get("service", ""), options.repository
    )
    auth["realm_scheme"] = realm.scheme
    sub = probe.Report(target=realm_target)
    addresses = probe_net.resolve(sub, options.timeout)
    sock = None
    if addresses:
        sock, _ = probe_net.connect(sub, addresses, options.timeout)
    if sock is None:
        auth["realm_transport"] = "unreachable"
        auth["realm_go_error"] = sub.steps[-1].go_error
    elif realm.scheme == "http":
        sock.close()
        auth["realm_transport"] = "plain-http-url"
    else:
        result = probe_tls.probe_transport(sub, sock, options)
        auth["realm_transport"] = result.kind
        auth["realm_go_error"] = (
            sub.steps[-1].go_error
            if result.kind != "tls-handshake"
            else sub.evidence.get("cert_go_error", "")
        )
        if result.kind == "tls-handshake":
            auth["realm_cert_verdict"] = sub.evidence.get("cert_verdict", "")
    if auth["realm_transport"] in ("tls-handshake", "plain-http-url") and not auth.get(
        "realm_go_error"
    ):
        fetch_token(auth, realm_target, addresses[0], options)
    status = "ok" if auth.get("realm_status") == 200 else "failed"
    outcome = (
        auth.get("realm_go_error")
        or f"token endpoint returned {auth.get('realm_status')}"
    )
    report.step(
        "realm",
        status,
        f"Token realm {params['realm']}: {outcome}.",
        options.timeout,
        started,
        auth.get("realm_go_error", ""),
    )


def token_url(realm: str, service: str, repository: str) -> str:
    """Build the anonymous token URL containers/image requests: Go's sorted, escaped query."""
    query = f"scope={urllib.parse.quote_plus(f'repository:{repository}:pull', safe='')}"
    if service:
        query += f"&service={urllib.parse.quote_plus(service, safe='')}"
    return f"{realm}?{query}"


def fetch_token(
    auth: dict, realm_target: probe.Target, address: str, options: probe.Options
) -> None:
    """GET the token endpoint anonymously, as a pull without credentials does."""
    url = auth["token_url"]
    split = urllib.parse.urlsplit(url)
    path = split.path + "?" + split.query
    try:
        status, _reason, _headers, _body = http_request(
            address,
            realm_target.host,
            realm_target.port,
            split.scheme == "https",
            options.timeout,
            path,
        )
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        auth["realm_go_error"] = error_text(exc)
        return
    auth["realm_status"] = status
