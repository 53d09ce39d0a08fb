"""Probe step 4: check a captured chain the way Go's `crypto/x509` does.

Go 1.19 `Certificate.Verify` checks the leaf's validity period first, then the
name (`VerifyHostname`, SANs only), then builds a chain to a trusted root, and
returns the first failure. OpenSSL differs (it accepts a CN-only certificate
and reports chain errors first), so the probe does not rely on an OpenSSL
handshake here: it inspects the certificates with `cryptography` and
reproduces Go's error texts (`crypto/x509` `HostnameError`,
`CertificateInvalidError`, `UnknownAuthorityError`).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
)

from gateway import certs, probe
from gateway.certs import fingerprint, load_certs, san_names
from gateway.errors import GatewayError

UNKNOWN_AUTHORITY_TEXT = "x509: certificate signed by unknown authority"
MAX_CHAIN_DEPTH = 8


@dataclass
class Anchor:
    """A trusted certificate and where it came from (system store, --ca, certs.d)."""

    cert: x509.Certificate
    source: str


def system_anchors() -> list[Anchor]:
    """Load the system trust store that Go reads on Linux (the OpenSSL default CA file)."""
    cafile = ssl.get_default_verify_paths().cafile
    if not cafile or not Path(cafile).is_file():
        return []
    with warnings.catch_warnings():
        # Debian's bundle has a root with a negative serial; cryptography warns on it.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            return [
                Anchor(c, "system")
                for c in x509.load_pem_x509_certificates(Path(cafile).read_bytes())
            ]
        except ValueError:
            return []


def check_ca_files(paths: list[Path]) -> None:
    """Raise GatewayError for a --ca file that is missing or holds no certificate."""
    for path in paths:
        if Path(path).is_dir():
            raise GatewayError(
                f"The CA file {str(path)!r} is a directory: pass the CA certificate "
                "file itself, e.g. certs/ca.crt, or the certs.d root with --cert-dir."
            )
        if not Path(path).is_file():
            raise GatewayError(
                f"The CA file {str(path)!r} does not exist: pass the CA certificate "
                "the clients trust, e.g. certs/ca.crt."
            )
        load_certs(Path(path))


def load_anchors(
    target: probe.Target, options: probe.Options
) -> tuple[list[Anchor], list[str]]:
    """Collect every certificate a client would trust for `target`, and the files they came from."""
    anchors = system_anchors() if options.system_trust else []
    sources = ["system store"] if anchors else []
    for path in options.ca_files:
        if Path(path).is_dir():
            raise GatewayError(
                f"The CA file {str(path)!r} is a directory: pass the CA certificate "
                "file itself, e.g. certs/ca.crt, or the certs.d root with --cert-dir."
            )
        if not Path(path).is_file():
            raise GatewayError(
                f"The CA file {str(path)!r} does not exist: pass the CA certificate the clients trust, e.g. certs/ca.crt."
            )
        anchors += [Anchor(c, str(path)) for c in load_certs(Path(path))]
        sources.append(str(path))
    if options.cert_dir is not None:
        folder = Path(options.cert_dir) / target.reference
        # Docker and containers/image read every *.crt in the folder as a CA.
        for path in sorted(folder.glob("*.crt")):
            anchors += [Anchor(c, str(path)) for c in load_certs(path)]
            sources.append(str(path))
    return anchors, sources


def go_rfc3339(moment: datetime.datetime) -> str:
    """Format a time like Go's `time.RFC3339`: seconds precision, `Z` for UTC."""
    text = moment.replace(microsecond=0).isoformat()
    return text.replace("+00:00", "Z")


def validity_error(leaf: x509.Certificate, now: datetime.datetime) -> tuple[str, str]:
    """Return (verdict, Go text) when `now` lies outside the leaf's validity period."""
    # Go formats the current time in the local zone and the certificate's time in UTC.
    local_now = go_rfc3339(now.astimezone())
    if now < leaf.not_valid_before_utc:
        before = go_rfc3339(leaf.not_valid_before_utc)
        return (
            probe.NOT_YET_VALID,
            f"x509: certificate has expired or is not yet valid: current time {local_now} is before {before}",
        )
    if now > leaf.not_valid_after_utc:
        after = go_rfc3339(leaf.not_valid_after_utc)
        return (
            probe.EXPIRED,
            f"x509: certificate has expired or is not yet valid: current time {local_now} is after {after}",
        )
    return "", ""


def _match_hostname(pattern: str, host: str) -> bool:
    """Go's `matchHostnames`: label by label, a `*` only as the whole leftmost label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if not pattern or not host:
        return False
    pattern_labels, host_labels = pattern.split("."), host.split(".")
    if len(pattern_labels) != len(host_labels):
        return False
    for index, (want, have) in enumerate(zip(pattern_labels, host_labels, strict=True)):
        if index == 0 and want == "*":
            continue
        if want != have:
            return False
    return True




def hostname_error(leaf: x509.Certificate, host: str) -> tuple[str, str]:
    """Return (verdict, Go text) when the leaf's SANs do not cover `host`, else ('', '')."""
    dns_names, ip_sans = san_names(leaf)
    try:
        expected_ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        expected_ip = None
    if expected_ip is not None:
        if any(ipaddress.ip_address(a) == expected_ip for a in ip_sans):
            return "", ""
    elif any(_match_hostname(name, host) for name in dns_names):
        return "", ""

    if not certs.has_san(leaf) and _match_hostname(certs.common_name(leaf), host):
        return (
            probe.CN_ONLY,
            "x509: certificate relies on legacy Common Name field, use SANs instead",
        )
    if expected_ip is not None:
        if not ip_sans:
            return (
                probe.IP_SAN_MISSING,
                f"x509: cannot validate certificate for {host} because it doesn't contain any IP SANs",
            )
        valid = ", ".join(ip_sans)
    else:
        valid = ", ".join(dns_names)
    if not valid:
        verdict = probe.NAME_MISMATCH if certs.has_san(leaf) else probe.CN_ONLY
        return (
            verdict,
            f"x509: certificate is not valid for any names, but wanted to match {host}",
        )
    return probe.NAME_MISMATCH, f"x509: certificate is valid for {valid}, not {host}"


def _signature_error(cert: x509.Certificate, issuer: x509.Certificate) -> str:
    """'' when `issuer` signed `cert`, else Go's `CheckSignatureFrom` error text."""
    try:
        cert.verify_directly_issued_by(issuer)
    except ValueError:
        return "x509: issuer name does not match subject from issuing certificate"
    except Exception:  # InvalidSignature, or TypeError for an unsupported key type
        if isinstance(issuer.public_key(), ec.EllipticCurvePublicKey):
            return "x509: ECDSA verification failure"
        if isinstance(issuer.public_key(), rsa.RSAPublicKey):
            return "crypto/rsa: verification error"
        if isinstance(issuer.public_key(), ed25519.Ed25519PublicKey):
            return "x509: Ed25519 verification failure"
        return "x509: signature verification failure"
    return ""


def build_chain(
    leaf, sent: list[x509.Certificate], anchors: list[Anchor]
) -> tuple[list[x509.Certificate], str]:
    """Build a chain from `leaf` to an anchor; on failure return ([], Go's unknown-authority text)."""
    hint: list[tuple[str, x509.Certificate]] = []

    def extend(
        cert: x509.Certificate, chain: list[x509.Certificate]
    ) -> list[x509.Certificate]:
        if any(a.cert == cert for a in anchors):
            return chain
        if len(chain) > MAX_CHAIN_DEPTH:
            return []
        for candidate in [a.cert for a in anchors] + sent:
            if candidate.subject != cert.issuer or candidate in chain:
                continue
            problem = _signature_error(cert, candidate)
            if problem:
                if not hint:
                    hint.append((problem, candidate))
                continue
            if any(a.cert == candidate for a in anchors):
                return chain + [candidate]
            found = extend(candidate, chain + [candidate])
            if found:
                return found
        return []

    chain = extend(leaf, [leaf])
    if chain:
        return chain, ""
    text = UNKNOWN_AUTHORITY_TEXT
    if hint:
        problem, candidate = hint[0]
        name = (
            certs.common_name(candidate)
            or _first_org(candidate)
            or f"serial:{candidate.serial_number}"
        )
        text += f" (possibly because of {_go_quote(problem)} while trying to verify candidate authority certificate {_go_quote(name)})"
    return [], text


def _first_org(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(values[0].value) if values else ""


def _go_quote(text: str) -> str:
    """Go's %q for plain ASCII text: double quotes, backslash and quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ca_issuers_url(cert: x509.Certificate) -> str:
    try:
        access = cert.extensions.get_extension_for_class(
            x509.AuthorityInformationAccess
        ).value
    except x509.ExtensionNotFound:
        return ""
    for description in access:
        if description.access_method == AuthorityInformationAccessOID.CA_ISSUERS:
            return description.access_location.value
    return ""


def describe(cert: x509.Certificate) -> dict:
    """Return the certificate fields the report shows as evidence."""
    dns_names, ip_sans = san_names(cert)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "common_name": certs.common_name(cert),
        "dns_sans": dns_names,
        "ip_sans": ip_sans,
        "has_san_extension": certs.has_san(cert),
        "not_before": go_rfc3339(cert.not_valid_before_utc),
        "not_after": go_rfc3339(cert.not_valid_after_utc),
        "self_signed": cert.issuer == cert.subject and not _signature_error(cert, cert),
        "sha256": fingerprint(cert),
    }


def _server_auth_error(leaf: x509.Certificate) -> str:
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ""
    if (
        ExtendedKeyUsageOID.SERVER_AUTH in usages
        or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages
    ):
        return ""
    return "x509: certificate specifies an incompatible key usage"


def check_chain(
    report: probe.Report,
    chain_der: list[bytes],
    options: probe.Options,
    now: datetime.datetime | None = None,
) -> None:
    """Record the certificate verdict for a captured chain in `report.evidence`."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    sent = [x509.load_der_x509_certificate(der) for der in chain_der]
    leaf = sent[0]
    anchors, sources = load_anchors(report.target, options)
    evidence = report.evidence
    evidence["certificates"] = [describe(c) for c in sent]
    evidence["trust_sources"] = sources
    evidence["clock_utc"] = go_rfc3339(now)

    # Go's order: validity period, then the name, then the chain (crypto/x509 Verify).
    verdict, text = validity_error(leaf, now)
    if not verdict:
        verdict, text = hostname_error(leaf, report.target.host)
    if not verdict:
        chain, text = build_chain(leaf, sent[1:], anchors)
        if not chain:
            verdict = _authority_verdict(report, leaf, sent)
        else:
            evidence["verified_chain"] = [c.subject.rfc4514_string() for c in chain]
            text = _server_auth_error(leaf)
            verdict = probe.NAME_MISMATCH if text else ""
    evidence["cert_verdict"] = verdict or probe.TLS_OK
    evidence["cert_go_error"] = text


def _authority_verdict(
    report: probe.Report, leaf: x509.Certificate, sent: list[x509.Certificate]
) -> str:
    """Tell a self-signed leaf, a missing intermediate and an unknown CA apart."""
    if leaf.issuer == leaf.subject and not _signature_error(leaf, leaf):
        return probe.SELF_SIGNED
    issuer = leaf.issuer.rfc4514_string()
    if len(sent) == 1:
        url = _ca_issuers_url(leaf)
        if url:
            report.evidence["missing_issuer"] = issuer
            report.evidence["ca_issuers_url"] = url
            return probe.CHAIN_INCOMPLETE
        report.findings.append(
            probe.Finding(
                "Note",
                f"The server sent 1 certificate, issued by {issuer!r}. If that issuer is an "
                "intermediate CA and not a root, the registry must send it after the leaf "
                "certificate (chain incomplete); otherwise the clients need its CA.",
            )
        )
    return probe.UNKNOWN_AUTHORITY
