"""Describe certificates and keys for people: role, SANs, fingerprint, validity.

Used by `certs show` and by the gateway's start-up and reload log lines. No
function here ever returns key material, only the key's type and mode.
"""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway import certs
from gateway.certnames import describe_constraints
from gateway.certstore import ca_constraints, long_date
from gateway.errors import CertificateError

CERT_SUFFIXES = (".crt", ".cert", ".pem")
KEY_SUFFIXES = (".key",)


def role(cert: x509.Certificate) -> str:
    """Name what a certificate is for: root CA, intermediate CA, server or client leaf."""
    if certs.is_ca(cert):
        return "Root CA" if cert.issuer == cert.subject else "Intermediate CA"
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return "Leaf certificate"
    if ExtendedKeyUsageOID.SERVER_AUTH in usages:
        return "Server certificate"
    if ExtendedKeyUsageOID.CLIENT_AUTH in usages:
        return "Client certificate"
    return "Leaf certificate"


def san_text(cert: x509.Certificate) -> str:
    """Format the SANs as `DNS:localhost, IP:127.0.0.1`, or say there are none."""
    dns_names, addresses = certs.san_names(cert)
    parts = [f"DNS:{name}" for name in dns_names] + [f"IP:{address}" for address in addresses]
    return ", ".join(parts) if parts else "none (Go clients reject a certificate without SANs)"


def expiry_text(cert: x509.Certificate) -> str:
    """Format the end of validity with the days left, such as `... UTC (in 396 days)`."""
    left = cert.not_valid_after_utc - certs.now()
    if left.total_seconds() < 0:
        return f"{long_date(cert.not_valid_after_utc)} (expired {-left.days} days ago)"
    return f"{long_date(cert.not_valid_after_utc)} (in {left.days} days)"


def describe_certificate(cert: x509.Certificate) -> list[str]:
    """Return the lines `certs show` prints for one certificate."""
    lines = [f"{role(cert)}: {cert.subject.rfc4514_string()}"]
    if cert.issuer != cert.subject:
        lines.append(f"Issuer: {cert.issuer.rfc4514_string()}")
    if not certs.is_ca(cert):
        lines.append(f"SANs: {san_text(cert)}")
    constraints = ca_constraints(cert)
    if constraints is not None:
        lines.append(f"Name constraints: {describe_constraints(constraints)}")
    lines.append(f"SHA-256 fingerprint: {certs.fingerprint(cert)}")
    lines.append(f"Valid from: {long_date(cert.not_valid_before_utc)}")
    lines.append(f"Valid until: {expiry_text(cert)}")
    return lines


def key_kind(key: certs.ServingKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519"
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return f"ECDSA {key.curve.name}"


def describe_folder(folder: Path) -> list[tuple[Path, list[str]]]:
    """Describe each certificate and key file in `folder`, skipping backups."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CertificateError(
            f"The folder {str(folder)!r} was not found: create a CA in it with: "
            f"registry-gateway certs init --dir {folder}"
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and ".bak-" not in p.name)
    loaded: dict[Path, list[x509.Certificate]] = {}
    result = []
    for path in files:
        if path.suffix in CERT_SUFFIXES:
            loaded[path] = _read_certs(path)
            lines = []
            for index, cert in enumerate(loaded[path]):
                if index:
                    lines.append("")
                lines += describe_certificate(cert)
            result.append((path, lines or ["No certificate could be read from this file."]))
    for path in files:
        if path.suffix in KEY_SUFFIXES:
            result.append((path, [_describe_key(path, loaded)]))
    backups = [p for p in folder.iterdir() if ".bak-" in p.name]
    if backups:
        result.append((folder, [f"{len(backups)} backup file(s) (*.bak-*) not shown."]))
    return result


def _read_certs(path: Path) -> list[x509.Certificate]:
    try:
        return certs.load_certs(path)
    except CertificateError:
        return []


def _describe_key(path: Path, loaded: dict[Path, list[x509.Certificate]]) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    try:
        key = certs.load_serving_key(path)
    except CertificateError as exc:
        return f"Private key, mode {mode:04o}; it could not be read: {exc}"
    owners = [
        str(cert_path)
        for cert_path, chain in loaded.items()
        if chain and certs.key_matches(chain[0], key)
    ]
    matched = f"matches {', '.join(owners)}" if owners else "matches no certificate here"
    return f"Private key: {key_kind(key)}, mode {mode:04o}, {matched}"
