"""`probe --explain`: recognise a pasted client error, explain it, then probe its host.

Recognises the lines docker, containerd/ctr, podman/skopeo, k3s (kubelet and
crictl wrap containerd's text in `rpc error: ... desc = ...`) and BuildKit
print, old and new: Go 1.20+ wraps certificate errors as `tls: failed to verify
certificate: x509: ...` and docker before 20.10 printed URLs without quotes.
"""

from __future__ import annotations

import argparse
import re
import socket
from dataclasses import asdict, dataclass, field

from gateway import probe
from gateway.verdicts import gateway_listen

URL = re.compile(r'(?:Get|Head|Post|Put|Patch)\s+"?(https?)://([^/"\s]+)(/[^"\s]*)?"?')
PING = re.compile(
    r"pinging container registry ([^\s:]+(?::\d+)?|\[[0-9a-fA-F:]+\](?::\d+)?):"
)
REFERENCE = re.compile(
    r'(?:failed to resolve reference|failed to pull image|failed to push|Error response from daemon: pull access denied for|image) "?(\[?[A-Za-z0-9.:-]+\]?(?::\d+)?)/'
)
LOOKUP = re.compile(r"lookup ([^\s:]+) on ")
DIAL = re.compile(r"dial tcp (\[[0-9a-fA-F:]+\]:\d+|[0-9.]+:\d+)")


@dataclass
class Rule:
    """One recognisable error: a pattern, the verdict it points to, the meaning and the fix."""

    pattern: str
    verdict: str
    meaning: str
    fix: str
    side: str


RULES = [
    Rule(
        r"server gave HTTP response to HTTPS client",
        probe.PLAIN_HTTP_REGISTRY,
        "The client spoke HTTPS and the server answered in plain HTTP: the registry (or the token realm in the URL) has no TLS.",
        "Put the gateway in front: registry-gateway serve --upstream http://{authority} --name {host} --listen {listen}",
        "gateway",
    ),
    Rule(
        r"oversized record received with length 20527",
        probe.PLAIN_HTTP_REGISTRY,
        "An old Go client read the plain-HTTP answer 'HTTP/' as a TLS record header (0x502F = 20527): the registry has no TLS.",
        "Put the gateway in front: registry-gateway serve --upstream http://{authority} --name {host} --listen {listen}",
        "gateway",
    ),
    Rule(
        r"first record does not look like a TLS handshake",
        probe.PLAINTEXT_NOT_HTTP,
        "The port answered the TLS ClientHello with plaintext that is not HTTP: another service, or an HTTPS_PROXY that points at a plain-HTTP proxy.",
        "Check what listens on {authority}: registry-gateway probe {authority}",
        "registry",
    ),
    Rule(
        r"legacy Common Name field",
        probe.CN_ONLY,
        "The certificate has a Common Name but no subjectAltName, which Go clients have rejected since Go 1.15; GODEBUG=x509ignoreCN=0 stopped working in Go 1.17.",
        "Reissue the certificate with a SAN for {host} from the local CA, then set the registry's http.tls certificate and key to the new files: registry-gateway certs issue {host}",
        "registry",
    ),
    Rule(
        r"doesn't contain any IP SANs",
        probe.IP_SAN_MISSING,
        "The client connected by IP address and the certificate has no iPAddress SAN; the CN is never used.",
        "Reissue the certificate with the SAN IP:{host}, or connect by a DNS name the certificate lists.",
        "registry",
    ),
    Rule(
        r"certificate is valid for .+, not |certificate is not valid for any names",
        probe.NAME_MISMATCH,
        "The certificate's SANs do not list the name the client used.",
        "Reissue the certificate with the SAN {san}, or connect by a name it lists.",
        "registry",
    ),
    Rule(
        r"certificate has expired or is not yet valid",
        probe.EXPIRED,
        "The certificate's validity period does not contain the client's clock: it expired, or one of the two clocks is wrong.",
        "Renew the certificate and check both machines' clocks.",
        "registry",
    ),
    Rule(
        r"certificate signed by unknown authority",
        probe.UNKNOWN_AUTHORITY,
        "The client does not trust the CA that issued the certificate, or the server left out an intermediate certificate.",
        "Trust the CA: registry-gateway certs export --host {authority} --for docker (it goes to /etc/docker/certs.d/{authority}/ca.crt).",
        "client",
    ),
    Rule(
        r"remote error: tls: (?:bad certificate|certificate required)",
        probe.TLS_ALERT,
        "The registry requires a client certificate and the client sent none. Docker never sends one to a registry in insecure-registries.",
        "Put client.cert and client.key in /etc/docker/certs.d/{authority}/ and remove the host from insecure-registries.",
        "client",
    ),
    Rule(
        r"connect: connection refused",
        probe.REFUSED,
        "Nothing accepts TCP connections on that address and port.",
        "Start the registry on {authority}, or use the port it listens on.",
        "registry",
    ),
    Rule(
        r"no such host",
        probe.UNRESOLVABLE,
        "The client machine cannot resolve the registry's name.",
        "Add {host} to the client's DNS or hosts file.",
        "client",
    ),
    Rule(
        r"Client\.Timeout exceeded while awaiting headers",
        probe.TIMEOUT,
        "The client's HTTP timeout ran out (Go net/http Client.Timeout): no connection came up in time, or the server accepted the request and sent no response headers, as a stalled registry or proxy does.",
        "Check the route and firewall to {authority}, and whether the registry or a proxy in front of it hangs: registry-gateway probe {authority}",
        "registry",
    ),
    Rule(
        r"i/o timeout|TLS handshake timeout|context deadline exceeded",
        probe.TIMEOUT,
        "The connection or the TLS handshake timed out: a firewall drops the packets, or the server accepts and never answers.",
        "Check the route and firewall to {authority}: registry-gateway probe {authority}",
        "registry",
    ),
    Rule(
        r"Client sent an HTTP request to an HTTPS server|400 Bad Request",
        probe.PLAIN_HTTP_REGISTRY,
        "The client spoke plain HTTP to a TLS port: an http:// mirror or endpoint, insecure-registries fallback, or ctr's plain-HTTP default for localhost and 127.0.0.1.",
        'Use https:// for this registry; for ctr, a hosts.toml with server = "https://{authority}" and its ca.',
        "client",
    ),
    Rule(
        r"413 Request Entity Too Large",
        probe.NOT_A_REGISTRY,
        "An intermediate proxy caps request bodies (HTML 413 from nginx): a layer upload chunk was larger than the limit.",
        "Set client_max_body_size 0; in the nginx server block, or push through the gateway, which has no body limit.",
        "registry",
    ),
    Rule(
        r"504 Gateway Timeout",
        probe.NOT_A_REGISTRY,
        "A proxy timed out during the layer upload: its request timeout is shorter than the transfer.",
        "Raise the proxy's timeouts (nginx proxy_read_timeout, proxy_send_timeout), or push through the gateway.",
        "registry",
    ),
    Rule(
        r"no basic auth credentials|unauthorized: authentication required|401 Unauthorized",
        probe.TLS_OK,
        "The transport works and the registry wants credentials.",
        "Log in first: docker login {authority}",
        "client",
    ),
    Rule(
        r"mixing sysregistry v1/v2 is not supported|must be in v2 format but is in v1",
        probe.TLS_OK,
        "registries.conf mixes the obsolete v1 tables ([registries.insecure]) with v2 [[registry]] blocks.",
        'Rewrite the insecure entry as a v2 [[registry]] block with location = "{authority}" and insecure = true.',
        "client",
    ),
]


@dataclass
class Explanation:
    """The facts found in the pasted text: client, registry address, failing URL, matched rule."""

    recognised: bool
    client: str = ""
    host: str = ""
    port: int = 0
    url: str = ""
    verdict: str = ""
    meaning: str = ""
    fix: str = ""
    side: str = ""
    matched: str = ""
    realm: bool = False
    notes: list[str] = field(default_factory=list)


def guess_client(text: str) -> str:
    if (
        text.startswith("ctr:")
        or "failed to resolve reference" in text
        and "rpc error" not in text
    ):
        return "containerd"
    if "rpc error" in text:
        return "k3s/kubelet (containerd CRI)"
    if (
        "buildkit" in text.lower()
        or "failed to solve" in text
        or "exporting to image" in text
    ):
        return "buildkit"
    if (
        "pinging container registry" in text
        or "initializing source" in text
        or "level=fatal" in text
    ):
        return "podman/skopeo"
    if (
        "Error response from daemon" in text
        or "The push refers to repository" in text
        or "Retrying in" in text
    ):
        return "docker"
    return "unknown"


def find_address(text: str) -> tuple[str, int, str]:
    """Return the registry's host, port and the failing URL named in the text."""
    url_match = URL.search(text)
    if url_match:
        target = probe.parse_target(url_match.group(2))
        port = target.port
        if not target.port_given:
            port = 443 if url_match.group(1) == "https" else 80
        return (
            target.host,
            port,
            f"{url_match.group(1)}://{url_match.group(2)}{url_match.group(3) or ''}",
        )
    for pattern in (PING, REFERENCE, DIAL):
        match = pattern.search(text)
        if match and (
            "." in match.group(1)
            or ":" in match.group(1)
            or match.group(1) == "localhost"
        ):
            target = probe.parse_target(match.group(1))
            return target.host, target.port, ""
    match = LOOKUP.search(text)
    if match:
        return match.group(1), 443, ""
    return "", 0, ""


def explain(text: str) -> Explanation:
    """Match the pasted text against the known client errors."""
    text = text.strip()
    host, port, url = find_address(text)
    client = guess_client(text)
    lookup = LOOKUP.search(text)
    if lookup and not host:
        host = lookup.group(1)
    for rule in RULES:
        match = re.search(rule.pattern, text)
        if not match:
            continue
        authority = probe.join_host_port(host, port) if host else "HOST:PORT"
        explanation = Explanation(
            True,
            client,
            host,
            port,
            url,
            rule.verdict,
            rule.meaning,
            rule.fix.format(
                authority=authority,
                host=host or "HOST",
                listen=gateway_listen(host or "HOST"),
                san=f"{'IP' if probe.is_ip(host) else 'DNS'}:{host or 'HOST'}",
            ),
            rule.side,
            match.group(0),
        )
        if (
            url
            and not urlpath(url).startswith("/v2")
            and rule.verdict not in (probe.REFUSED, probe.UNRESOLVABLE)
        ):
            explanation.realm = True
            explanation.notes.append(
                f"The failing URL {url} is not the registry's /v2/ API: it is the token realm the registry's "
                "WWW-Authenticate names, so the fix belongs on the auth service, and an insecure-registries "
                "entry for the registry does not cover it."
            )
        if "tls: failed to verify certificate" in text:
            explanation.notes.append(
                "The 'tls: failed to verify certificate:' wrapper marks a client built with Go 1.20 or later."
            )
        return explanation
    return Explanation(False, client, host, port, url)


def urlpath(url: str) -> str:
    return "/" + url.split("://", 1)[-1].partition("/")[2]


def reachable(host: str, port: int, timeout: float) -> bool:
    """Return whether the host resolves and accepts a TCP connection, so a probe can run."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def run(text: str, args: argparse.Namespace, options: probe.Options) -> int:
    """Print the explanation, then probe the host when it is reachable from here."""
    from gateway import probe_cli

    explanation = explain(text)
    report = None
    if (
        explanation.host
        and explanation.port
        and reachable(explanation.host, explanation.port, options.timeout)
    ):
        report = probe.run(probe.Target(explanation.host, explanation.port), options)
    if args.json:
        import json

        print(
            json.dumps(
                {
                    "explain": asdict(explanation),
                    "probe": report.to_json() if report else None,
                },
                indent=2,
            )
        )
    else:
        print(render(explanation, report is not None))
        if report is not None:
            print()
            print(probe_cli.render(report))
    if report is not None:
        return 0 if report.ok else 1
    return 1


def client_label(client: str) -> str:
    """Name the client in a sentence: `docker`, or `an unknown client` when the text does not tell."""
    return "an unknown client" if client == "unknown" else client


def render(explanation: Explanation, probed: bool) -> str:
    if not explanation.recognised:
        where = (
            f" It names {probe.join_host_port(explanation.host, explanation.port)}."
            if explanation.host
            else ""
        )
        return f"Note: The pasted text matches no known registry client error.{where} Run registry-gateway probe HOST:PORT to test the registry."
    authority = (
        probe.join_host_port(explanation.host, explanation.port)
        if explanation.host
        else "(no address in the text)"
    )
    lines = [
        f"Recognised: {explanation.matched!r} from {client_label(explanation.client)}, for {authority}.",
        f"  URL: {explanation.url or '(none in the text)'}",
        f"  Meaning: {explanation.meaning}",
        f"  Fix ({explanation.side}): {explanation.fix}",
    ]
    lines += [f"Note: {note}" for note in explanation.notes]
    if explanation.host and not probed:
        lines.append(
            f"Note: {authority} is not reachable from here, so no probe ran; run the probe on a machine that reaches it."
        )
    return "\n".join(lines)
