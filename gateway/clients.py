"""Client rules and the error text each registry client prints for a probe's evidence.

The wording matches dockerd/docker CLI 20.10.24, containerd/ctr 1.6.20, podman
4.3.1 and skopeo 1.9.3 (Debian bookworm, built with Go 1.19.8). The tests compare
these texts with real skopeo, dockerd and ctr runs; a prediction marked
`unverified` was not. Go 1.20 and later wrap certificate errors as `tls: failed
to verify certificate: x509: ...`, and docker 25+ changed some wrappers, so newer
clients print longer lines.

Rules that change the outcome:
- docker treats 127.0.0.0/8, and any name that resolves there, as insecure by
  default: HTTPS without certificate checks, then plain HTTP, and after that
  fallback it prints the last endpoint's error. Newer moby also adds ::1/128.
- ctr uses plain HTTP only for `localhost`, loopback IPs and `[::1]` when no
  hosts.toml exists, and HTTPS with verification for every other name.
- skopeo and podman have no loopback rule: HTTPS with verification.
"""

from __future__ import annotations

import http
import ipaddress
from dataclasses import dataclass

from gateway import probe
from gateway.probe import Report

CLIENT_NAMES = ("docker", "containerd", "podman")
# What docker 20.10 and skopeo 1.9 print for `[::1]:5000/app` in an image reference.
IPV6_REFERENCE_ERROR = "invalid reference format"


@dataclass
class Prediction:
    """One client's outcome against the target: success, or the exact last line it prints."""

    client: str
    ok: bool
    message: str
    url: str
    rule: str = ""
    core: str = ""
    unverified: bool = False
    push_message: str = ""


def docker_insecure_by_default(report: Report) -> bool:
    """Return whether dockerd's built-in 127.0.0.0/8 entry covers the target (moby isSecureIndex)."""
    for address in report.evidence.get("addresses", []):
        try:
            if ipaddress.ip_address(address) in ipaddress.ip_network("127.0.0.0/8"):
                return True
        except ValueError:
            continue
    return False


def ctr_uses_plain_http(target: probe.Target) -> bool:
    """containerd 1.6's default for localhost and loopback IPs without a hosts.toml."""
    if target.host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(target.host).is_loopback
    except ValueError:
        return False


def go_quote(text: str) -> str:
    """Go's strconv.Quote for text: escapes quotes, backslashes and control characters."""
    escapes = {"\n": "\\n", "\t": "\\t", "\r": "\\r", '"': '\\"', "\\": "\\\\"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def status_text(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def https_error(report: Report) -> str:
    """Return the Go error of a verified `GET https://HOST:PORT/v2/`, '' when it would pass."""
    return report.go_error


def realm_error(report: Report) -> str:
    """containers/image's text for a failed anonymous token request."""
    auth = report.evidence.get("auth", {})
    if auth.get("realm_go_error"):
        return f'Get "{auth["token_url"]}": {auth["realm_go_error"]}'
    status = auth.get("realm_status", 0)
    return f"Requesting bearer token: invalid status code from registry {status} ({status_text(status)})"


def predict(report: Report, options: probe.Options) -> None:
    """Fill `report.clients` for the clients `options.client` selects."""
    selected = CLIENT_NAMES if options.client == "all" else (options.client,)
    builders = {
        "docker": predict_docker,
        "containerd": predict_ctr,
        "podman": predict_podman,
    }
    report.clients = []
    for name in selected:
        if name in ("docker", "podman") and ":" in report.target.host:
            report.clients.append(_ipv6_reference(report, name))
        else:
            report.clients.append(builders[name](report))
    for prediction in report.clients:
        if prediction.client == "docker" and not prediction.ok:
            # `docker push` prints the daemon's error without the CLI's prefix.
            prefix = "Error response from daemon: "
            prediction.push_message = prediction.message.removeprefix(prefix)


def _ipv6_reference(report: Report, client: str) -> Prediction:
    """docker 20.10 and skopeo 1.9 reject `[::1]:5000/app` before any connection."""
    url = f"https://{report.target.authority}/v2/"
    rule = (
        "this client cannot parse an IPv6 literal in an image reference; "
        "use a name that resolves to the address"
    )
    message = IPV6_REFERENCE_ERROR
    if client == "podman":
        source = f"docker://{report.target.reference}/{report.repository}:{report.tag}"
        core = f'Error parsing image name "{source}": {message}'
        # skopeo's line, checked by the tests; podman's wrapper was not run.
        return Prediction("podman", False, core, url, rule, message)
    # NOTE: docker's wording here comes from its reference parser, not from a run.
    return Prediction("docker", False, message, url, rule, message, unverified=True)


def _v2_failure(report: Report) -> str:
    """containers/image's ping text for a non-registry response, '' for a registry."""
    v2 = report.evidence.get("v2", {})
    if not v2 or v2.get("is_registry"):
        return ""
    status = v2.get("status")
    if status is None:
        return v2.get("error", "")
    return f"invalid status code from registry {status} ({status_text(status)})"


def predict_podman(report: Report) -> Prediction:
    """podman and skopeo: HTTPS with verification, no loopback exception."""
    target = report.target
    url = f"https://{target.authority}/v2/"
    error = https_error(report)
    ping = f"pinging container registry {target.reference}"
    if error:
        core = f'{ping}: Get "{url}": {error}'
    elif report.verdict in (probe.NOT_A_REGISTRY, probe.UPSTREAM_DOWN):
        core = f"{ping}: {_v2_failure(report)}"
    elif report.verdict == probe.AUTH_REALM_PROBLEM:
        core = realm_error(report)
    elif report.verdict == probe.CLIENT_CERT_REQUIRED:
        # containers/image accepts a 401 ping and fails on the manifest (skopeo 1.9.3
        # against registry-gateway with tls.client_ca, checked by the tests).
        core = (
            f"reading manifest {report.tag} in {target.reference}/{report.repository}: "
            f"{client_cert_error(report)}"
        )
    else:
        rule = (
            "needs `podman login` first"
            if report.evidence.get("v2", {}).get("status") == 401
            else ""
        )
        return Prediction("podman", True, "OK", url, rule=rule)
    message = f"Error: initializing source docker://{target.reference}/{report.repository}:{report.tag}: {core}"
    return Prediction(
        "podman",
        False,
        message,
        url,
        rule="podman and skopeo use verified HTTPS for every host, loopback included; "
        "skopeo prints the same text after its own prefix",
        core=core,
    )


def predict_docker(report: Report) -> Prediction:
    target = report.target
    if docker_insecure_by_default(report):
        return _docker_insecure(report)
    url = f"https://{target.authority}/v2/"
    error = https_error(report)
    rule = f"{target.host} is outside 127.0.0.0/8, so dockerd uses verified HTTPS only"
    if error:
        core = f'Get "{url}": {error}'
        return Prediction(
            "docker", False, f"Error response from daemon: {core}", url, rule, core
        )
    if report.verdict == probe.AUTH_REALM_PROBLEM:
        core = _docker_realm_error(report)
        message = f"Error response from daemon: {core}"
        # Checked against dockerd for a transport error; a token endpoint's bad
        # status is worded after containers/image.
        checked = bool(report.evidence["auth"].get("realm_go_error"))
        return Prediction(
            "docker", False, message, url, rule, core, unverified=not checked
        )
    if report.verdict in (probe.NOT_A_REGISTRY, probe.UPSTREAM_DOWN):
        core = _docker_non_registry(report)
        return Prediction(
            "docker",
            False,
            f"Error response from daemon: {core}",
            url,
            rule,
            core,
            unverified=True,
        )
    if report.verdict == probe.CLIENT_CERT_REQUIRED:
        # NOTE: worded after the registry's error; not checked against dockerd.
        core = client_cert_error(report)
        message = f"Error response from daemon: {core}"
        return Prediction("docker", False, message, url, rule, core, unverified=True)
    return _docker_ok(report, url, rule)


def client_cert_error(report: Report) -> str:
    """Return the registry's `unauthorized: MESSAGE` text for a missing client certificate."""
    from gateway import verdicts

    message = verdicts.registry_error_message(report.evidence.get("v2", {}))
    return f"unauthorized: {message}"


def _docker_realm_error(report: Report) -> str:
    """dockerd names the manifest request whose token fetch failed, then the token error."""
    target = report.target
    manifest = (
        f"https://{target.authority}/v2/{report.repository}/manifests/{report.tag}"
    )
    return f'Head "{manifest}": {realm_error(report)}'


def _docker_ok(report: Report, url: str, rule: str) -> Prediction:
    if report.evidence.get("v2", {}).get("status") == 401:
        rule += "; needs `docker login` first (without it: no basic auth credentials)"
    return Prediction("docker", True, "OK", url, rule)


def _docker_non_registry(report: Report) -> str:
    v2 = report.evidence.get("v2", {})
    status = v2.get("status")
    body = v2.get("body", "")
    first = body.lstrip()[:1]
    if status and first and first not in "{[":
        return f"error parsing HTTP {status} response body: invalid character {first!r} looking for beginning of value: {go_quote(body)}"
    return f"received unexpected HTTP status: {status} {status_text(status or 0)}"


def _docker_insecure(report: Report) -> Prediction:
    """dockerd for 127.0.0.0/8: HTTPS without verification, then plain HTTP."""
    target = report.target
    where = "lies in" if target.is_ip else "resolves into"
    rule = (
        f"{target.host} {where} 127.0.0.0/8, which dockerd treats as insecure: "
        "HTTPS without certificate checks, then plain HTTP"
    )
    verdict = report.verdict
    http_url = f"http://{target.authority}/v2/"
    if verdict in (probe.REFUSED, probe.UNREACHABLE, probe.TIMEOUT):
        core = f'Get "{http_url}": {report.go_error}'
        return Prediction(
            "docker", False, f"Error response from daemon: {core}", http_url, rule, core
        )
    if verdict == probe.AUTH_REALM_PROBLEM:
        core = _docker_realm_error(report)
        return Prediction(
            "docker",
            False,
            f"Error response from daemon: {core}",
            http_url,
            rule,
            core,
            unverified=True,
        )
    if verdict == probe.CLIENT_CERT_REQUIRED:
        # dockerd sends no client certificate to an insecure registry, then falls
        # back to plain HTTP on the TLS port; the exact last line was not checked.
        return Prediction(
            "docker",
            False,
            f'Error response from daemon: Get "{http_url}": ...',
            http_url,
            rule + "; dockerd sends no client certificate to an insecure registry",
            unverified=True,
        )
    if report.scheme in ("https", "http") and report.evidence.get("v2", {}).get(
        "is_registry"
    ):
        url = f"{report.scheme}://{target.authority}/v2/"
        prediction = _docker_ok(report, url, rule)
        if (
            report.scheme == "https"
            and report.evidence.get("v2", {}).get("status") == 401
        ):
            prediction.rule += (
                "; without a login dockerd falls back to plain HTTP on the TLS port and prints that "
                "fallback's error (connection reset by peer, or error parsing HTTP 400 response body), "
                "which hides the missing login"
            )
        return prediction
    if verdict in (probe.NOT_A_REGISTRY, probe.UPSTREAM_DOWN):
        core = _docker_non_registry(report)
        return Prediction(
            "docker", False, f"Error response from daemon: {core}", http_url, rule, core
        )
    return Prediction(
        "docker",
        False,
        f'Error response from daemon: Get "{http_url}": ...',
        http_url,
        rule,
        unverified=True,
    )


def predict_ctr(report: Report) -> Prediction:
    target = report.target
    reference = f"{target.reference}/{report.repository}:{report.tag}"
    manifests = f"/v2/{report.repository}/manifests/{report.tag}"
    prefix = f'ctr: failed to resolve reference "{reference}"'
    if ctr_uses_plain_http(target):
        return _ctr_plain(report, prefix, reference, manifests)
    url = f"https://{target.authority}{manifests}"
    rule = "ctr uses verified HTTPS for a name that is not localhost or a loopback IP"
    error = https_error(report)
    if error:
        core = f'failed to do request: Head "{url}": {error}'
        return Prediction("containerd", False, f"{prefix}: {core}", url, rule, core)
    if report.verdict in (
        probe.NOT_A_REGISTRY,
        probe.AUTH_REALM_PROBLEM,
        probe.CLIENT_CERT_REQUIRED,
    ):
        return Prediction(
            "containerd", False, f"{prefix}: ...", url, rule, unverified=True
        )
    return Prediction("containerd", True, "OK", url, rule)


def _ctr_plain(
    report: Report, prefix: str, reference: str, manifests: str
) -> Prediction:
    target = report.target
    url = f"http://{target.authority}{manifests}"
    rule = f'ctr speaks plain HTTP to {target.host} unless a hosts.toml sets server = "https://{target.authority}"'
    verdict = report.verdict
    if verdict in (probe.REFUSED, probe.UNREACHABLE, probe.TIMEOUT):
        core = f'failed to do request: Head "{url}": {report.go_error}'
        return Prediction("containerd", False, f"{prefix}: {core}", url, rule, core)
    if report.scheme == "https":
        reply = report.evidence.get("plain_http_reply", {})
        if reply.get("status"):
            status = reply["status"]
            core = f"pulling from host {target.authority} failed with status code [manifests {report.tag}]: {status} {status_text(status)}"
            return Prediction("containerd", False, f"{prefix}: {core}", url, rule, core)
        return Prediction(
            "containerd", False, f"{prefix}: ...", url, rule, unverified=True
        )
    v2 = report.evidence.get("v2", {})
    if v2.get("is_registry"):
        if v2.get("status") == 401:
            rule += "; needs --user USER:PASSWORD (without it: 401 Unauthorized)"
        return Prediction("containerd", True, "OK", url, rule)
    if v2.get("status") == 404:
        core = f"{reference}: not found"
        return Prediction("containerd", False, f"{prefix}: {core}", url, rule, core)
    return Prediction("containerd", False, f"{prefix}: ...", url, rule, unverified=True)
