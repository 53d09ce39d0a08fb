"""Local CA and leaf certificates, built with `cryptography` (no openssl subprocess).

Layout of a certificate folder (default `certs/`):

    ca.crt        the local CA certificate: the one file clients trust
    ca.key        the CA's private key (0400 where the platform allows)
    gateway.crt   the gateway's leaf certificate followed by any intermediates
    gateway.key   the leaf's private key (0600)

Leaf certificates carry every name as a subjectAltName of the right type (an IP
address is an iPAddress SAN, never a dNSName holding the string), because Go
clients ignore the Common Name since Go 1.15 and reject a CN-only certificate with
"x509: certificate relies on legacy Common Name field, use SANs instead".
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import CertificateError
from gateway.files import atomic_write, move_to_backup

log = logging.getLogger("gateway.certs")

KEY_TYPES = ("ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096")
DEFAULT_KEY_TYPE = "ecdsa-p256"
CA_DAYS = 3650
# 397 days is the longest leaf lifetime that Apple platforms and the major browsers
# accept for certificates issued after 2020-09-01 (Apple support article HT211025).
LEAF_DAYS = 397
# Start validity an hour early so that a client whose clock is a little behind
# does not see "certificate has expired or is not yet valid".
BACKDATE = datetime.timedelta(hours=1)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
LEAF_CERT = "gateway.crt"
LEAF_KEY = "gateway.key"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
# A key type the gateway serves TLS with but never signs certificates with.
# skopeo 1.9 and dockerd 20.10 (Go 1.19) and curl 7.88 (OpenSSL 3.0) connect to
# a gateway that serves an Ed25519 certificate.
ServingKey = PrivateKey | ed25519.Ed25519PrivateKey


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Create a private key of one of KEY_TYPES."""
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type.startswith("rsa-") and key_type in KEY_TYPES:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise CertificateError(
        f"Unknown key type {key_type!r}: use one of {', '.join(KEY_TYPES)}."
    )


def split_names(names: list[str]) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """Sort names into DNS names and IP addresses, dropping any port with a warning."""
    dns_names: list[str] = []
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for raw in names:
        name = strip_port(raw.strip())
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            lowered = name.lower().rstrip(".")
            if lowered and lowered not in dns_names:
                dns_names.append(lowered)
        else:
            if address not in addresses:
                addresses.append(address)
    return dns_names, addresses


def strip_port(name: str) -> str:
    """Return `name` without a `:PORT` suffix; a port has no place in a SAN."""
    if name.startswith("["):
        return name[1:].partition("]")[0]
    if name.count(":") == 1:
        host, _, port = name.partition(":")
        if port.isdigit():
            log.warning("Dropped the port from %r: a certificate name never carries a port.", name)
            return host
    return name


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    dns_names, addresses = split_names(names)
    entries: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    entries += [x509.IPAddress(a) for a in addresses]
    if not entries:
        raise CertificateError("A leaf certificate needs at least one name or address.")
    return x509.SubjectAlternativeName(entries)


def _serial() -> int:
    return x509.random_serial_number()


def _signature_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    return hashes.SHA256()


def default_ca_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    return f"registry-gateway local CA {user}@{socket.gethostname()}"


def create_ca(
    key: PrivateKey,
    common_name: str | None = None,
    days: int = CA_DAYS,
    name_constraints: x509.NameConstraints | None = None,
) -> x509.Certificate:
    """Build a self-signed CA certificate that may sign leaves but no further CAs."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "registry-gateway"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name or default_ca_name()),
        ]
    )
    start = now() - BACKDATE
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if name_constraints is not None:
        builder = builder.add_extension(name_constraints, critical=True)
    return builder.sign(key, _signature_hash(key))


def issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    key: PrivateKey,
    names: list[str],
    days: int = LEAF_DAYS,
    client: bool = False,
    not_before: datetime.datetime | None = None,
) -> x509.Certificate:
    """Sign a leaf certificate for `names` (server) or for a client identity.

    `not_before` defaults to an hour ago; the lifetime never outlasts the CA.
    """
    dns_names, addresses = split_names(names)
    if dns_names:
        first = dns_names[0]
    elif addresses:
        first = str(addresses[0])
    else:
        first = ""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "registry-gateway"),
            # The CN is informational only; clients match the SANs below.
            x509.NameAttribute(NameOID.COMMON_NAME, first[:64]),
        ]
    )
    start = not_before or now() - BACKDATE
    end = min(start + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    public = key.public_key()
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if dns_names or addresses:
        builder = builder.add_extension(_san(names), critical=False)
    return builder.sign(ca_key, _signature_hash(ca_key))


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_key(path: Path, key: PrivateKey, mode: int = 0o600) -> None:
    atomic_write(path, key_pem(key), mode=mode)


def write_certs(path: Path, certs: list[x509.Certificate]) -> None:
    atomic_write(path, b"".join(cert_pem(c) for c in certs), mode=0o644)


def load_certs(path: Path) -> list[x509.Certificate]:
    """Read every PEM certificate in `path`, in file order."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(
            f"Cannot read certificate file {str(path)!r}: {exc.strerror}."
        ) from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise CertificateError(
                f"No certificate found in {str(path)!r}: the file must hold PEM "
                "('-----BEGIN CERTIFICATE-----') or DER data."
            ) from None
    return certs


def load_key(path: Path) -> PrivateKey:
    """Read an unencrypted ECDSA or RSA PEM key, such as a CA key that issues certificates."""
    key = _read_key(path)
    if not isinstance(key, PrivateKey):
        raise CertificateError(
            f"The key in {str(path)!r} is {key_type_name(key)}, but the gateway signs "
            "only with ECDSA or RSA keys: use an ECDSA P-256 key."
        )
    return key


def load_serving_key(path: Path) -> ServingKey:
    """Read an unencrypted ECDSA, RSA or Ed25519 PEM key to serve TLS with."""
    key = _read_key(path)
    if not isinstance(key, ServingKey):
        raise CertificateError(
            f"The key in {str(path)!r} is {key_type_name(key)}, which Go's crypto/tls "
            "(docker, containerd, podman, skopeo) does not support: use an ECDSA P-256 key."
        )
    return key


def key_type_name(key) -> str:
    """Return a key's algorithm name, such as `DSA` or `Ed448`, from its `cryptography` class."""
    return type(key).__name__.removeprefix("_").removesuffix("PrivateKey")


def _read_key(path: Path):
    """Read an unencrypted PEM private key; the message never contains key material."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"Cannot read key file {str(path)!r}: {exc.strerror}.") from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(
            f"The key in {str(path)!r} is encrypted: the gateway needs an unencrypted "
            "key, readable only by its user (chmod 600)."
        ) from None
    except ValueError:
        raise CertificateError(
            f"No private key found in {str(path)!r}: the file must hold a PEM key "
            "('-----BEGIN PRIVATE KEY-----')."
        ) from None


def public_bytes(key_or_cert) -> bytes:
    public = key_or_cert.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(cert: x509.Certificate, key: ServingKey) -> bool:
    return public_bytes(cert) == public_bytes(key)


def fingerprint(cert: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint in the colon-separated form of `openssl x509 -fingerprint`."""
    digest = cert.fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def san_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """Return the certificate's DNS SANs and IP SANs as strings."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns_names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    addresses = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    return dns_names, addresses


def has_san(cert: x509.Certificate) -> bool:
    """Return whether the certificate has a subjectAltName extension at all."""
    try:
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    return True


def common_name(cert: x509.Certificate) -> str:
    """Return the subject's first Common Name, or "" when it has none."""
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def name_covered(cert: x509.Certificate, name: str) -> bool:
    """Return whether a Go client connecting to `name` would accept the certificate's SANs."""
    dns_names, addresses = san_names(cert)
    host = strip_port(name).lower()
    try:
        return str(ipaddress.ip_address(host)) in addresses
    except ValueError:
        pass
    for pattern in dns_names:
        if pattern == host:
            return True
        # A wildcard covers exactly one leftmost label (RFC 6125 section 6.4.3).
        if pattern.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


@dataclass
class ServingPair:
    """The files the gateway serves TLS with, and the CA a client must trust."""

    cert_path: Path
    key_path: Path
    ca_path: Path | None
    created_ca: bool = False
    created_leaf: bool = False
    names: list[str] = field(default_factory=list)
    reason: str = ""
    backups: list[Path] = field(default_factory=list)


def protect_ca_key(path: Path) -> None:
    # 0400, so that not even the owner overwrites the CA key by accident.
    try:
        os.chmod(path, 0o400)
    except OSError:
        pass  # pragma: no cover - platforms without POSIX modes keep the 0600 file.


def ensure_local_ca(folder: Path, key_type: str = DEFAULT_KEY_TYPE) -> tuple[x509.Certificate, PrivateKey, bool]:
    """Load the CA in `folder`, or create one when neither file exists."""
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if cert_path.exists() and key_path.exists():
        cert = load_certs(cert_path)[0]
        key = load_key(key_path)
        if not key_matches(cert, key):
            raise CertificateError(
                f"The CA key {str(key_path)!r} does not belong to {str(cert_path)!r}: "
                "restore the matching pair, or move both away to create a new CA."
            )
        return cert, key, False
    if cert_path.exists() or key_path.exists():
        present = cert_path if cert_path.exists() else key_path
        missing = key_path if present is cert_path else cert_path
        raise CertificateError(
            f"Found {str(present)!r} without {str(missing)!r}: restore the missing file, "
            "or move the other one away to create a new CA."
        )
    key = generate_key(key_type)
    cert = create_ca(key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertificateError(
            f"Cannot create the certificate folder {str(folder)!r}: {exc.strerror}. "
            "Give a folder you can write with --certs-dir."
        ) from None
    write_key(key_path, key)
    protect_ca_key(key_path)
    write_certs(cert_path, [cert])
    log.debug("Created a local CA in %s", cert_path)
    return cert, key, True


def leaf_needs_renewal(cert: x509.Certificate, at: datetime.datetime | None = None) -> bool:
    """True when under a third of the leaf's lifetime is left."""
    at = at or now()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - at < lifetime / 3


def ensure_serving_pair(folder: Path, names: list[str]) -> ServingPair:
    """Reuse the gateway's leaf in `folder` if it is still right, or issue a new one.

    A leaf is reissued when it is missing, does not cover one of `names`, was not
    signed by the folder's CA, or has under a third of its lifetime left. The new
    leaf keeps every name the old one had, so a leaf made with `certs issue` for
    more names loses none, and the old pair is moved to timestamped backups first.
    """
    if folder.exists() and not folder.is_dir():
        raise CertificateError(
            f"The certificate folder {str(folder)!r} is a file: give a folder with "
            "--certs-dir (tls.certs_dir), for example 'certs'."
        )
    ca_cert, ca_key, created_ca = ensure_local_ca(folder)
    cert_path, key_path = folder / LEAF_CERT, folder / LEAF_KEY
    reason = _leaf_problem(cert_path, key_path, ca_cert, names)
    if reason is None:
        return ServingPair(cert_path, key_path, folder / CA_CERT, created_ca, False)

    wanted = list(names)
    backups: list[Path] = []
    if cert_path.exists():
        try:
            old_dns, old_addresses = san_names(load_certs(cert_path)[0])
        except CertificateError:
            old_dns, old_addresses = [], []
        wanted += [n for n in [*old_dns, *old_addresses] if n not in wanted]
    for path in (cert_path, key_path):
        if path.exists():
            backups.append(move_to_backup(path))

    key = generate_key()
    leaf = issue_leaf(ca_cert, ca_key, key, wanted)
    write_key(key_path, key)
    write_certs(cert_path, [leaf])
    log.debug("Issued a new leaf certificate %s (%s)", cert_path, reason)
    return ServingPair(
        cert_path, key_path, folder / CA_CERT, created_ca, True, names=wanted, reason=reason, backups=backups
    )


def _leaf_problem(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate, names: list[str]
) -> str | None:
    if not cert_path.exists() or not key_path.exists():
        return "there was none yet"
    try:
        leaf = load_certs(cert_path)[0]
        key = load_key(key_path)
    except CertificateError as exc:
        return f"the old one could not be read: {exc}"
    if not key_matches(leaf, key):
        return "the old key did not match"
    if leaf.issuer != ca_cert.subject:
        return "the old one was signed by another CA"
    try:
        leaf.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "the old one was signed by another CA"
    missing = [n for n in names if not name_covered(leaf, n)]
    if missing:
        return f"the old one did not cover {', '.join(missing)}"
    if leaf_needs_renewal(leaf):
        return "the old one had under a third of its lifetime left"
    return None
