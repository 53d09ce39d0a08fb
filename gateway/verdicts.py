"""Turn the probe's evidence into one verdict, the side to change and the fixes."""

from __future__ import annotations

import ipaddress
import json

from gateway import clients, probe, probe_tls
from gateway.probe import Finding, Fix, Report

GATEWAY_PORT = 5443

TRANSPORT_VERDICTS = {
    "tls-alert": probe.TLS_ALERT,
    "closed": probe.CLOSED,
    "reset": probe.RESET,
    "silence": probe.SILENT,
}
# Go's texts for the alerts a server sends when the client offers no certificate.
# OpenSSL's TLS 1.3 servers send certificate_required, and the Go 1.19 servers
# (the distribution registry 2.8) send bad_certificate, in TLS 1.3 and 1.2.
CLIENT_CERT_ALERTS = (
    "remote error: tls: certificate required",
    "remote error: tls: bad certificate",
)
# registry-gateway's 401 message when tls.client_ca is set and no certificate came.
GATEWAY_CLIENT_CERT_REPLY = "requires a TLS client certificate"

CONNECT_VERDICTS = {
    "refused": probe.REFUSED,
    "unreachable": probe.UNREACHABLE,
    "timeout": probe.TIMEOUT,
}


def decide(report: Report, options: probe.Options) -> None:
    """Set verdict, scheme, Go error, side, summary, findings and fixes on `report`."""
    evidence = report.evidence
    failed = next(
        (
            s
            for s in report.steps
            if s.status == "failed" and s.name in ("resolve", "connect")
        ),
        None,
    )
    if failed is not None and failed.name == "resolve":
        report.verdict, report.go_error = probe.UNRESOLVABLE, failed.go_error
    elif failed is not None:
        report.verdict, report.go_error = (
            CONNECT_VERDICTS[evidence["connect"]],
            failed.go_error,
        )
    else:
        _decide_transport(report)
    report.side = SIDES.get(report.verdict, "registry")
    report.summary = summary(report)
    report.fixes = fixes(report)
    _add_findings(report)


def _decide_transport(report: Report) -> None:
    evidence = report.evidence
    kind = evidence.get("first_bytes_kind", "")
    tls_step = next(s for s in report.steps if s.name == "tls")
    v2 = evidence.get("v2", {})
    if kind == "tls-handshake" and tls_step.status == "failed":
        _decide_failed_handshake(report, tls_step.go_error)
        return
    if kind == "tls-handshake":
        report.scheme = "https"
        cert_verdict = evidence.get("cert_verdict", probe.TLS_OK)
        report.go_error = evidence.get("cert_go_error", "")
        if cert_verdict != probe.TLS_OK:
            report.verdict = cert_verdict
        elif client_certificate_required(report):
            report.verdict = probe.CLIENT_CERT_REQUIRED
            report.go_error = v2.get("tls_alert", "")
        elif upstream_down(report):
            report.verdict = probe.UPSTREAM_DOWN
        elif not v2.get("is_registry"):
            report.verdict = probe.NOT_A_REGISTRY
        elif _realm_failed(evidence):
            report.verdict = probe.AUTH_REALM_PROBLEM
        else:
            report.verdict = probe.TLS_OK
        return
    report.go_error = tls_step.go_error
    if kind == "tls-alert" and report.go_error in CLIENT_CERT_ALERTS:
        report.scheme = "https"
        report.verdict = probe.CLIENT_CERT_REQUIRED
        return
    if kind in ("http", "plaintext"):
        report.scheme = "http" if v2.get("status") else ""
        if v2.get("is_registry"):
            report.verdict = probe.PLAIN_HTTP_REGISTRY
        elif upstream_down(report):
            report.verdict = probe.UPSTREAM_DOWN
        elif v2.get("status"):
            report.verdict = probe.NOT_A_REGISTRY
        else:
            report.verdict = probe.PLAINTEXT_NOT_HTTP
        return
    report.verdict = TRANSPORT_VERDICTS.get(kind, probe.CLOSED)


def _decide_failed_handshake(report: Report, go_error: str) -> None:
    """Decide a handshake that began with a TLS record and then failed.

    A TLS 1.2 server that checks the client certificate sends its alert here,
    after its ServerHello.
    """
    report.go_error = go_error
    if go_error in CLIENT_CERT_ALERTS:
        report.scheme = "https"
        report.verdict = probe.CLIENT_CERT_REQUIRED
    elif go_error == "EOF":
        report.verdict = probe.CLOSED
    elif go_error == probe_tls.HANDSHAKE_TIMEOUT:
        report.verdict = probe.SILENT
    else:
        report.verdict = probe.TLS_ALERT


def client_certificate_required(report: Report) -> bool:
    """Return whether `GET /v2/` failed for want of a TLS client certificate.

    Two forms count: a TLS alert after the handshake (a TLS 1.3 server checks
    the client certificate after its Finished), and registry-gateway's 401 with
    the registry-JSON error and no WWW-Authenticate challenge.
    """
    v2 = report.evidence.get("v2", {})
    if v2.get("tls_alert") in CLIENT_CERT_ALERTS:
        return True
    return (
        v2.get("status") == 401
        and not v2.get("www_authenticate")
        and GATEWAY_CLIENT_CERT_REPLY in registry_error_message(v2)
    )


def registry_error_message(v2: dict) -> str:
    """Return the first `errors[].message` of a registry-JSON body, '' for any other body."""
    try:
        errors = json.loads(v2.get("body", "")).get("errors") or [{}]
        return str(errors[0].get("message", ""))
    except (ValueError, AttributeError):
        return ""


def _realm_failed(evidence: dict) -> bool:
    auth = evidence.get("auth", {})
    if "realm_transport" not in auth:
        return False
    return bool(auth.get("realm_go_error")) or auth.get("realm_status") not in (
        200,
        401,
    )


SIDES = {
    probe.TLS_OK: "",
    probe.PLAIN_HTTP_REGISTRY: "gateway",
    probe.UNKNOWN_AUTHORITY: "client",
    probe.SELF_SIGNED: "client",
    probe.UNRESOLVABLE: "client",
    probe.CLIENT_CERT_REQUIRED: "client",
}


def summary(report: Report) -> str:
    """Describe in one sentence what is on the port, with the exact value that proves it."""
    target, evidence = report.target, report.evidence
    verdict = report.verdict
    title = probe.VERDICT_TITLES[verdict]
    leaf = (evidence.get("certificates") or [{}])[0]
    v2 = evidence.get("v2", {})
    names = ", ".join(_listed_names(report)) or "no names"
    texts = {
        probe.TLS_OK: f"{target.authority} is a registry on HTTPS and its certificate chain verifies for {target.host!r}.",
        probe.PLAIN_HTTP_REGISTRY: f"{target.authority} is a registry that speaks plain HTTP: the TLS ClientHello got {evidence.get('http_status_line', 'an HTTP answer')!r} back.",
        probe.UNKNOWN_AUTHORITY: f"The certificate of {target.authority} was issued by {leaf.get('issuer', '?')!r}, which no trusted CA vouches for.",
        probe.SELF_SIGNED: f"The certificate of {target.authority} is self-signed ({leaf.get('subject', '?')!r}) and not trusted by the clients.",
        probe.CHAIN_INCOMPLETE: f"The server sent 1 certificate; its issuer {evidence.get('missing_issuer', '?')!r} is missing from the chain.",
        probe.NAME_MISMATCH: f"The certificate of {target.authority} does not cover {target.host!r}: it lists {names}.",
        probe.IP_SAN_MISSING: f"The certificate of {target.authority} has no IP SAN, so it cannot cover {target.host}; it lists {names}.",
        probe.CN_ONLY: f"The certificate of {target.authority} has CN={leaf.get('common_name', '')!r} and no SAN extension, which Go clients reject.",
        probe.EXPIRED: f"The certificate of {target.authority} expired at {leaf.get('not_after')}; this machine's clock reads {evidence.get('clock_utc')}.",
        probe.NOT_YET_VALID: f"The certificate of {target.authority} is valid only from {leaf.get('not_before')}; this machine's clock reads {evidence.get('clock_utc')}.",
        probe.NOT_A_REGISTRY: f"{target.authority} is not a registry: GET {v2.get('url', '/v2/')} returned {v2.get('status')} {v2.get('reason', '')} and {v2.get('looks_like', 'no')} without the Docker-Distribution-Api-Version header.",
        probe.UPSTREAM_DOWN: _upstream_down_summary(report),
        probe.PLAINTEXT_NOT_HTTP: f"{target.authority} answered the TLS ClientHello with plaintext that is neither TLS nor HTTP: {evidence.get('first_bytes', '')!r}.",
        probe.AUTH_REALM_PROBLEM: _realm_summary(report),
        probe.CLIENT_CERT_REQUIRED: _client_cert_summary(report),
        probe.UNRESOLVABLE: f"The name {target.host!r} does not resolve on this machine.",
    }
    return texts.get(verdict, f"{target.authority}: {title}: {report.go_error}.")


def upstream_down(report: Report) -> bool:
    """True when /v2/ got a registry-format 502, 503 or 504: a front end whose registry is down."""
    v2 = report.evidence.get("v2", {})
    return v2.get("status") in (502, 503, 504) and str(v2.get("api_version", "")).startswith("registry/2")


def _upstream_down_summary(report: Report) -> str:
    v2 = report.evidence.get("v2", {})
    try:
        message = json.loads(v2.get("body", ""))["errors"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        message = v2.get("reason", "")
    return (
        f"{report.target.authority} is a registry front end (a gateway or proxy) whose "
        f"registry is not answering: GET {v2.get('url', '/v2/')} returned "
        f"{v2.get('status')} {v2.get('reason', '')}: {message}."
    )


UPSTREAM_DOWN_FIXES = [
    (
        "registry",
        "Start the registry behind {authority}, or fix the front end's upstream address "
        "(for registry-gateway: --upstream or upstream.url); the clients' side is fine.",
        "",
    )
]


def _client_cert_summary(report: Report) -> str:
    v2 = report.evidence.get("v2", {})
    if report.go_error:
        proof = f"the server sent the TLS alert {report.go_error!r}"
    else:
        proof = f"GET {v2.get('url')} returned 401: {registry_error_message(v2)!r}"
    return (
        f"{report.target.authority} requires a TLS client certificate and the probe "
        f"sent none: {proof}."
    )


def _realm_summary(report: Report) -> str:
    auth = report.evidence.get("auth", {})
    realm = auth.get("params", {}).get("realm", "")
    outcome = (
        auth.get("realm_go_error")
        or f"the token endpoint returned {auth.get('realm_status')}"
    )
    return (
        f"The registry's TLS is fine, but the token realm {realm!r} fails: {outcome}."
    )


CHECK_LISTENER = (
    "registry",
    "Check what listens on {authority}: the registry must speak HTTPS there, "
    "or plain HTTP behind the gateway.",
    "",
)
# The registry on the port already speaks TLS, so the fix is a new certificate for
# it. A gateway in front would need a plain-HTTP upstream, which this port is not.
REISSUE = (
    "registry",
    "Reissue the registry's certificate with the SAN {san}; this command issues one "
    "from the local CA in certs/ (create that CA first with `registry-gateway certs "
    "init`). Set the registry's http.tls certificate and key to certs/gateway.crt and "
    "certs/gateway.key, then restart the registry.",
    "registry-gateway certs issue {host}",
)
TRUST_LOCAL_CA = (
    "client",
    "After reissuing, if the clients do not trust the local CA yet, install "
    "certs/ca.crt on each one as /etc/docker/certs.d/{reference}/ca.crt.",
    "registry-gateway certs export --host {authority} --for docker",
)
CONNECT_BY_LISTED_NAME = (
    "client",
    "Or connect by a name the certificate lists: {listed_names}.",
    "",
)

# Per verdict, the fixes best first as (side, text, command) templates.
FIXES = {
    probe.PLAIN_HTTP_REGISTRY: [
        (
            "gateway",
            "Put the gateway in front of the registry; clients then use "
            "https://{host}:{gateway_port} and trust its CA.",
            "registry-gateway serve --upstream http://{authority} --name {host} --listen {listen}",
        ),
        (
            "client",
            "Install the gateway's CA on each client as "
            "/etc/docker/certs.d/{host}:{gateway_port}/ca.crt.",
            "registry-gateway certs export --host {host}:{gateway_port} --for docker",
        ),
        (
            "client",
            "Or, on a trusted network only, list {authority} in each client's "
            "insecure-registries and restart dockerd.",
            "registry-gateway snippet docker {authority} --insecure",
        ),
    ],
    probe.UNKNOWN_AUTHORITY: [
        (
            "client",
            "Trust the CA that issued the registry's certificate: copy it to "
            "/etc/docker/certs.d/{reference}/ca.crt (no restart needed). If the "
            "registry is behind registry-gateway, this command writes it.",
            "registry-gateway certs export --host {authority} --for docker",
        )
    ],
    probe.CHAIN_INCOMPLETE: [
        (
            "registry",
            "Serve the leaf certificate followed by the intermediate: append the "
            "intermediate to the registry's certificate file and restart it.",
            "",
        )
    ],
    probe.NAME_MISMATCH: [REISSUE, CONNECT_BY_LISTED_NAME, TRUST_LOCAL_CA],
    probe.EXPIRED: [
        (
            "registry",
            "Renew the registry's certificate, and check that the registry's and this "
            "machine's clocks agree (both times are shown above).",
            "",
        )
    ],
    probe.AUTH_REALM_PROBLEM: [
        (
            "registry",
            "Serve the token endpoint over TLS with a certificate for its host (for "
            "example behind the gateway) and point the realm in the registry's auth "
            "config at that https:// URL.",
            "",
        )
    ],
    probe.NOT_A_REGISTRY: [
        (
            "registry",
            "Point the clients at the registry's port, or run the registry on "
            "{authority}: this port serves something else.",
            "",
        )
    ],
    probe.REFUSED: [
        (
            "registry",
            "Start the registry on {authority}, or use the port it listens on; nothing "
            "accepts connections there.",
            "",
        )
    ],
    probe.UNRESOLVABLE: [
        (
            "client",
            "Add {host} to this machine's DNS or hosts file (/etc/hosts), on every "
            "client.",
            "",
        )
    ],
}
FIXES[probe.CLIENT_CERT_REQUIRED] = [
    (
        "client",
        "Issue a client certificate pair from the CA the server trusts for clients "
        "(the gateway's tls.client_ca). This command issues one from the local CA "
        "in certs/ and writes certs/client.cert and certs/client.key.",
        "registry-gateway certs issue-client NAME",
    ),
    (
        "client",
        "For docker, copy client.cert and client.key to "
        "/etc/docker/certs.d/{reference}/ beside ca.crt (no restart needed).",
        "",
    ),
    (
        "client",
        "For podman and skopeo, copy them to /etc/containers/certs.d/{reference}/ "
        "(or ~/.config/containers/certs.d/{reference}/ for a rootless user), or "
        "pass skopeo --cert-dir DIR with a folder holding ca.crt, client.cert and "
        "client.key.",
        "",
    ),
    (
        "client",
        "For containerd, set client = [[\"client.cert\", \"client.key\"]] (full "
        "paths) in the [host.\"https://{authority}\"] table of its hosts.toml.",
        "",
    ),
]
FIXES[probe.SELF_SIGNED] = FIXES[probe.UNKNOWN_AUTHORITY]
FIXES[probe.IP_SAN_MISSING] = FIXES[probe.CN_ONLY] = FIXES[probe.NAME_MISMATCH]
FIXES[probe.NOT_YET_VALID] = FIXES[probe.EXPIRED]
for _verdict in (
    probe.PLAINTEXT_NOT_HTTP,
    probe.TLS_ALERT,
    probe.CLOSED,
    probe.RESET,
    probe.SILENT,
    probe.TIMEOUT,
    probe.UNREACHABLE,
):
    FIXES[_verdict] = [CHECK_LISTENER]


def _listed_names(report: Report) -> list[str]:
    leaf = (report.evidence.get("certificates") or [{}])[0]
    return leaf.get("dns_sans", []) + leaf.get("ip_sans", [])


def gateway_listen(host: str) -> str:
    """Return the --listen value for a gateway that `host`'s clients can reach.

    A gateway for a loopback registry stays on loopback; for any other host its
    clients are elsewhere on the network, so it listens on every interface.
    """
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return f"127.0.0.1:{GATEWAY_PORT}" if loopback else f"0.0.0.0:{GATEWAY_PORT}"


def fixes(report: Report) -> list[Fix]:
    """List the fixes for the verdict, best first, each naming the side to change."""
    target = report.target
    values = {
        "host": target.host,
        "authority": target.authority,
        "reference": target.reference,
        "gateway_port": GATEWAY_PORT,
        "listen": gateway_listen(target.host),
        "san": f"{'IP' if target.is_ip else 'DNS'}:{target.host}",
        "listed_names": ", ".join(_listed_names(report)),
    }
    templates = FIXES.get(report.verdict, [])
    if report.verdict == probe.UPSTREAM_DOWN:
        templates = UPSTREAM_DOWN_FIXES
    if not _listed_names(report):
        templates = [t for t in templates if t is not CONNECT_BY_LISTED_NAME]
    return [
        Fix(side, text.format(**values), command.format(**values))
        for side, text, command in templates
    ]


def client_fixes(report: Report, options: probe.Options) -> list[Fix]:
    """List the fixes for clients that fail for a reason of their own, not the verdict's.

    Call it after `clients.predict`. The two cases are ctr's plain-HTTP default for
    loopback hosts, which fails on a TLS port, and an IPv6 literal in an image
    reference, which docker and skopeo cannot parse.
    """
    target = report.target
    found, unparsed = [], []
    for prediction in report.clients:
        if prediction.ok:
            continue
        if (
            prediction.client == "containerd"
            and report.scheme == "https"
            and clients.ctr_uses_plain_http(target)
        ):
            ca_file = options.ca_files[0] if options.ca_files else "certs/ca.crt"
            found.append(
                Fix(
                    "client",
                    f"Give ctr a hosts.toml for {target.authority} with server = "
                    f'"https://{target.authority}" and ca set to the CA file, because '
                    f"without one ctr speaks plain HTTP to {target.host}. This command "
                    "prints the file and where it goes.",
                    f"registry-gateway snippet containerd {target.authority} --ca {ca_file}",
                )
            )
        elif prediction.core.endswith(clients.IPV6_REFERENCE_ERROR):
            unparsed.append(prediction.client)
    if unparsed:
        found.append(
            Fix(
                "client",
                f"{' and '.join(unparsed)} cannot parse the IPv6 literal {target.host} "
                "in an image reference: add a name for it to the hosts file "
                "(/etc/hosts) and use that name in the reference.",
            )
        )
    return found


def _add_findings(report: Report) -> None:
    evidence, target = report.evidence, report.target
    v2 = evidence.get("v2", {})
    if (
        report.scheme == "https"
        and report.verdict not in (probe.TLS_OK, probe.NOT_A_REGISTRY, probe.UPSTREAM_DOWN)
        and v2
        and not v2.get("is_registry")
    ):
        report.findings.append(
            Finding(
                "Warning",
                f"Behind the certificate problem, GET {v2.get('url')} is not a registry either ({v2.get('status')}).",
            )
        )
    if v2.get("status") == 401 and report.verdict != probe.CLIENT_CERT_REQUIRED:
        scheme = evidence.get("auth", {}).get("scheme", "")
        report.findings.append(
            Finding(
                "Note",
                f"The registry requires credentials ({scheme or 'unknown'} auth): clients need `docker login {target.reference}` first.",
            )
        )
    auth = evidence.get("auth", {})
    service = auth.get("params", {}).get("service", "")
    if service and _internal_name(service) and not _internal_name(target.host):
        report.findings.append(
            Finding(
                "Warning",
                f"The challenge's service={service!r} is an internal name; the registry's auth config leaks its backend address.",
            )
        )
    realm_host = auth.get("realm_authority", "")
    if realm_host and realm_host != target.authority:
        report.findings.append(
            Finding(
                "Note",
                f"An insecure-registries entry for {target.authority} does not cover the token realm at {realm_host}.",
            )
        )
    if auth.get("realm_scheme") == "http":
        report.findings.append(
            Finding(
                "Warning",
                f"The token realm {auth['params']['realm']!r} is plain HTTP: clients send their password there unencrypted.",
            )
        )


def _internal_name(authority: str) -> bool:
    host = authority.rsplit(":", 1)[0].strip("[]").lower()
    return (
        host in ("localhost", "127.0.0.1", "::1")
        or host.startswith("127.")
        or "." not in host
    )
