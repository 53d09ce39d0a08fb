"""`certs check`: find what Go registry clients will reject in an operator's certificate.

Each finding is one sentence saying what is wrong, the message a Go client
(docker, containerd, podman, skopeo) prints for it where there is one, and the
fix: the exact `certs issue` command, or the file edit. The Go messages follow
crypto/x509 in Go 1.19, the version skopeo 1.9 and docker 20.10 are built with.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import certs, nameconstraints
from gateway.certnames import split_host_port
from gateway.certstore import dir_option, long_date
from gateway.errors import CertificateError

EXPIRY_WARNING = datetime.timedelta(days=30)
MIN_RSA_BITS = 2048
MAX_CHAIN = 8
GO_CN_ONLY = "x509: certificate relies on legacy Common Name field, use SANs instead"
GO_UNKNOWN_AUTHORITY = "x509: certificate signed by unknown authority"
GO_KEY_USAGE = "x509: certificate specifies an incompatible key usage"
GO_PATH_LENGTH = "x509: too many intermediates for path length constraint"
# Debian's bundle, read when Python's OpenSSL reports no CA file of its own.
FALLBACK_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The subject `certs init` gives each local CA: this organization, and a Common
# Name of this prefix, the user and host, and a random suffix (gateway.certs).
LOCAL_CA_ORGANIZATION = "registry-gateway"
LOCAL_CA_PREFIX = "registry-gateway local CA "
# A DNS name (wildcards included) or an IP address: the form of a server's Common Name.
HOST_NAME = re.compile(r"[A-Za-z0-9*._:-]+")
PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@dataclass
class Finding:
    """One problem: `Error` for what clients reject, `Warning` for what they will soon."""

    level: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


@dataclass
class Report:
    """The findings for one certificate, plus notes on what was not checked."""

    cert_path: Path
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    root: x509.Certificate | None = None
    # The verified path from the leaf up to the trusted root, both included.
    path: list[x509.Certificate] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.findings.append(Finding("Error", message))

    def warning(self, message: str) -> None:
        self.findings.append(Finding("Warning", message))


def go_hostname_error(cert: x509.Certificate, host: str) -> str:
    """Return the message Go's crypto/x509 HostnameError prints for `host` (Go 1.19)."""
    dns_names, addresses = certs.san_names(cert)
    if not certs.has_san(cert) and _cn_matches(cert, host):
        return GO_CN_ONLY
    try:
        ipaddress.ip_address(host)
    except ValueError:
        valid = ", ".join(dns_names)
    else:
        if not addresses:
            return f"x509: cannot validate certificate for {host} because it doesn't contain any IP SANs"
        valid = ", ".join(addresses)
    if not valid:
        return f"x509: certificate is not valid for any names, but wanted to match {host}"
    return f"x509: certificate is valid for {valid}, not {host}"


def go_time_error(cert: x509.Certificate, at: datetime.datetime) -> str:
    """Return the message Go prints for a certificate outside its validity period."""
    if at < cert.not_valid_before_utc:
        relation, bound = "before", cert.not_valid_before_utc
    else:
        relation, bound = "after", cert.not_valid_after_utc
    return (
        "x509: certificate has expired or is not yet valid: current time "
        f"{_rfc3339(at)} is {relation} {_rfc3339(bound)}"
    )


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")




def _cn_matches(cert: x509.Certificate, host: str) -> bool:
    common_name = certs.common_name(cert).lower().rstrip(".")
    host = host.lower().rstrip(".")
    if common_name == host:
        return True
    return common_name.startswith("*.") and host.partition(".")[2] == common_name[2:]


def load_roots(ca_path: Path | None) -> tuple[list[x509.Certificate], str]:
    """Return the trust roots and where they came from: `ca_path`, or the system store."""
    if ca_path is not None:
        return certs.load_certs(ca_path), repr(str(ca_path))
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, str(FALLBACK_BUNDLE)):
        if candidate and os.path.isfile(candidate):
            return _load_bundle(Path(candidate)), f"the system store {candidate!r}"
    return [], "the system store (no CA bundle found)"


def _load_bundle(path: Path) -> list[x509.Certificate]:
    """Read a system CA bundle, skipping the certificates `cryptography` cannot parse."""
    roots = []
    for block in PEM_BLOCK.findall(path.read_bytes()):
        # Some distributions ship old roots with a negative serial number, which
        # cryptography parses with a deprecation warning; such roots are still valid.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            try:
                roots.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue
    return roots


def check_certificate(
    cert_path: Path,
    key_path: Path | None = None,
    ca_path: Path | None = None,
    names: list[str] | None = None,
    folder: Path = Path("certs"),
    at: datetime.datetime | None = None,
) -> Report:
    """Check a certificate chain file (leaf first) the way Go registry clients judge it."""
    at = at or certs.now()
    report = Report(cert_path)
    chain = certs.load_certs(cert_path)
    if _leaf_not_first(report, chain, cert_path):
        return report
    leaf = chain[0]
    command = _issue_command(leaf, names or [], folder)
    fix = _reissue_fix(leaf, names or [], folder, command)

    if key_path is not None:
        _check_key(report, leaf, cert_path, key_path, fix)
    else:
        report.notes.append("No --key given, so the key was not compared with the certificate.")
    if is_self_signed_server(chain):
        _warn_self_signed_server(report, cert_path, folder)
    else:
        _check_leaf_kind(report, leaf, cert_path)
    roots, source = load_roots(ca_path)
    # A leaf of a replaced local CA is fixed by issuing from the current one.
    _check_chain(report, chain, roots, source, cert_path, command)
    _check_name_constraints(report, leaf)
    _check_names(report, leaf, cert_path, names or [], fix)
    for index, cert in enumerate(chain):
        _check_validity(report, cert, index == 0, at, fix)
        _check_algorithms(report, cert, index == 0, fix)
    _check_key_usage(report, leaf, fix)
    return report


def _leaf_not_first(report: Report, chain: list[x509.Certificate], cert_path: Path) -> bool:
    """Report a chain file whose first certificate is a CA and a later one the leaf."""
    if len(chain) < 2 or not certs.is_ca(chain[0]):
        return False
    position = next((i for i, cert in enumerate(chain) if not certs.is_ca(cert)), None)
    if position is None:
        return False
    leaf = chain[position]
    report.error(
        f"The file {str(cert_path)!r} starts with the CA "
        f"{chain[0].subject.rfc4514_string()!r}, and the leaf "
        f"{leaf.subject.rfc4514_string()!r} is certificate {position + 1}. Servers "
        "present the certificates in file order and clients take the first as the "
        "server's own, so put the leaf certificate first: move its "
        f"-----BEGIN CERTIFICATE----- block (number {position + 1}) to the top of "
        f"{cert_path}, followed by the intermediates, then run this check again."
    )
    return True


def _names_to_issue(leaf: x509.Certificate, names: list[str]) -> list[str]:
    dns_names, addresses = certs.san_names(leaf)
    covered = [*dns_names, *addresses]
    for name in names:
        host, _port = split_host_port(name)
        if host.lower() not in covered:
            covered.append(host.lower())
    if not covered and certs.common_name(leaf):
        covered.append(certs.common_name(leaf).split(":")[0])
    return covered


def _issue_command(leaf: x509.Certificate, names: list[str], folder: Path) -> str:
    covered = _names_to_issue(leaf, names)
    shown = " ".join(covered) if covered else "NAME ..."
    return f"registry-gateway certs issue{dir_option(folder)} {shown} --force"


def reissue_fix(leaf: x509.Certificate, names: list[str], folder: Path) -> str:
    """Return how to replace `leaf` with one for `names`, as the findings of `check` give it."""
    return _reissue_fix(leaf, names, folder, _issue_command(leaf, names, folder))


def _reissue_fix(leaf: x509.Certificate, names: list[str], folder: Path, command: str) -> str:
    """Return how to get a corrected leaf: `command`, or two options.

    `certs issue --force` replaces the leaf with one from the local CA in `folder`,
    so for a leaf that CA did not issue it is only one of two choices.
    """
    if _issued_by_local_ca(leaf, folder):
        return command
    covered = _names_to_issue(leaf, names)
    sans = ", ".join(covered) if covered else "the names clients use"
    return (
        f"either reissue it from the CA that issued it, {leaf.issuer.rfc4514_string()!r}, "
        f"with the SANs {sans}, or switch to the gateway's local CA in "
        f"{str(folder)!r} (clients must then trust its ca.crt) with: {command}"
    )


def _issued_by_local_ca(leaf: x509.Certificate, folder: Path) -> bool:
    try:
        local_cas = certs.load_certs(folder / certs.CA_CERT)
    except CertificateError:
        return False
    return _find_issuer(leaf, local_cas) is not None


def _check_key(report: Report, leaf, cert_path: Path, key_path: Path, fix: str) -> None:
    try:
        key = certs.load_serving_key(key_path)
    except CertificateError as exc:
        report.error(str(exc))
        return
    if not certs.key_matches(leaf, key):
        report.error(
            f"The key {str(key_path)!r} does not match the certificate {str(cert_path)!r}, "
            "so every TLS handshake fails. Give the key that was created with this "
            f"certificate, or issue a new pair: {fix}"
        )
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        report.warning(
            f"The key {str(key_path)!r} is readable by other users (mode {mode:04o}). "
            f"Restrict it: chmod 600 {key_path}"
        )


def is_self_signed_server(chain: list[x509.Certificate]) -> bool:
    """Return whether `chain` is one self-signed certificate made for a server.

    `openssl req -x509` marks such a certificate CA:TRUE, and Go clients still
    accept it as a server certificate when the same certificate is their trusted
    ca.crt. It counts as a server certificate when it has a subjectAltName, or a
    Common Name that is a host name or an IP address, unlike the local CA's.
    """
    if len(chain) != 1 or chain[0].issuer != chain[0].subject:
        return False
    cert = chain[0]
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return certs.has_san(cert) or bool(HOST_NAME.fullmatch(certs.common_name(cert)))


def _warn_self_signed_server(report: Report, cert_path: Path, folder: Path) -> None:
    option = dir_option(folder)
    report.warning(
        f"The certificate {str(cert_path)!r} is self-signed, so each client must trust "
        f"this very certificate: install {str(cert_path)!r} as the client's ca.crt. "
        "Every renewal makes a new certificate and breaks that trust on every client. "
        f"To renew without that, create a local CA once (registry-gateway certs init{option}) "
        f"and issue the server certificate from it: registry-gateway certs issue{option} NAME ..."
    )


def _check_leaf_kind(report: Report, leaf, cert_path: Path) -> None:
    if certs.is_ca(leaf):
        report.error(
            f"The first certificate in {str(cert_path)!r} is a CA certificate, not a "
            "server leaf. Put the server's own certificate first in the file, followed "
            "by its intermediates."
        )


def _check_chain(report: Report, chain, roots, source: str, cert_path: Path, fix: str) -> None:
    path = [chain[0]]
    supplied = chain[1:]
    for _step in range(MAX_CHAIN):
        current = path[-1]
        root = _find_issuer(current, roots)
        if root is not None:
            report.root = root
            report.path = [*path, root] if root != current else path
            _check_path_length(report.path, report)
            return
        if current.issuer == current.subject:
            what = "The certificate" if current is chain[0] else "Its root"
            report.error(
                f"{what} {current.subject.rfc4514_string()!r} is self-signed and not "
                f"in {source}, so Go clients fail with \"{GO_UNKNOWN_AUTHORITY}\". "
                "Give its CA with --ca, or issue a leaf from the local CA: "
                "registry-gateway certs issue NAME ..."
            )
            return
        issuer = _find_issuer(current, supplied)
        if issuer is None:
            break
        path.append(issuer)
    missing = path[-1].issuer.rfc4514_string()
    impostor = _same_name_ca(path[-1], roots)
    if impostor is not None:
        report.error(
            f"The certificate {path[-1].subject.rfc4514_string()!r} names the issuer "
            f"{missing!r}, and the CA of that name in {source} did not sign it. A "
            "different CA with the same name did (for example one replaced by "
            "`registry-gateway certs init --force`), so Go clients fail with "
            f"\"{go_same_name_error(impostor)}\". Issue a new leaf from the current "
            f"CA: {fix}"
        )
        return
    replacement = _replacing_local_ca(path[-1], roots)
    if replacement is not None:
        report.error(
            f"The certificate was issued by the local CA {missing!r}, but {source} "
            f"contains another local CA, {replacement.subject.rfc4514_string()!r}: the CA "
            "was replaced (for example by `registry-gateway certs init --force`), so "
            f"Go clients that trust the new CA fail with \"{GO_UNKNOWN_AUTHORITY}\". "
            f"Issue a new leaf from the current CA: {fix}"
        )
        return
    if len(chain) == 1:
        # One certificate alone cannot show whether its issuer is a root or an
        # intermediate, so the message gives the fix for both.
        report.error(
            f"The file {str(cert_path)!r} contains the leaf without its issuer "
            f"{missing!r}, which is not in {source}, so Go clients fail with "
            f"\"{GO_UNKNOWN_AUTHORITY}\". If that issuer is an intermediate CA, append "
            f"the intermediate to the certificate file: cat intermediate.crt >> {cert_path} "
            "(Go clients do not fetch it). If it is a root CA, check against it with "
            "--ca FILE and install it on every client."
        )
    else:
        report.error(
            f"The chain in {str(cert_path)!r} ends at {missing!r}, which is not in "
            f"{source}, so Go clients fail with \"{GO_UNKNOWN_AUTHORITY}\". Append the "
            "missing intermediate to the certificate file, or give the right root "
            "with --ca FILE."
        )


def _check_path_length(path: list[x509.Certificate], report: Report) -> None:
    # path is leaf, intermediates..., root. A CA's pathLenConstraint limits the
    # number of intermediate CAs below it (RFC 5280 section 4.2.1.9).
    for position, cert in enumerate(path[1:], start=1):
        try:
            limit = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        except x509.ExtensionNotFound:
            continue
        below = position - 1
        if limit is not None and below > limit:
            report.error(
                f"The CA {cert.subject.rfc4514_string()!r} allows {limit} intermediate "
                f"CA(s) below it but the chain has {below}, so Go clients fail with "
                f"\"{GO_PATH_LENGTH}\". Issue the leaf directly from that CA: "
                "registry-gateway certs issue NAME ..."
            )


def go_same_name_error(candidate: x509.Certificate) -> str:
    """Return Go's UnknownAuthorityError text when `candidate` has the right name but another key.

    Go 1.19 crypto/x509 adds the failed signature check of a same-named
    candidate CA as a hint.
    """
    public = candidate.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        failure = "crypto/rsa: verification error"
    elif isinstance(public, ec.EllipticCurvePublicKey):
        failure = "x509: ECDSA verification failure"
    else:
        failure = "x509: Ed25519 verification failure"
    return (
        f'{GO_UNKNOWN_AUTHORITY} (possibly because of "{failure}" while trying to '
        f'verify candidate authority certificate "{certs.common_name(candidate)}")'
    )


def _same_name_ca(cert: x509.Certificate, candidates: list[x509.Certificate]) -> x509.Certificate | None:
    """Return a CA named as `cert`'s issuer whose key did not sign `cert`, if one is given."""
    for candidate in candidates:
        if candidate.subject == cert.issuer and candidate is not cert:
            return candidate
    return None


def _is_local_ca_name(name: x509.Name) -> bool:
    organizations = name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    common_names = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return (
        [str(o.value) for o in organizations] == [LOCAL_CA_ORGANIZATION]
        and len(common_names) == 1
        and str(common_names[0].value).startswith(LOCAL_CA_PREFIX)
    )


def _replacing_local_ca(cert: x509.Certificate, roots: list[x509.Certificate]) -> x509.Certificate | None:
    """Return a local CA from `roots` when `cert` was issued by another local CA."""
    if not _is_local_ca_name(cert.issuer):
        return None
    return next((root for root in roots if _is_local_ca_name(root.subject)), None)


def _find_issuer(cert: x509.Certificate, candidates: list[x509.Certificate]) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        if _signed_by(cert, candidate):
            return candidate
    return None


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Return whether `issuer`'s key made `cert`'s signature, SHA-1 signatures included.

    `verify_directly_issued_by` (cryptography 46) rejects SHA-1 signatures as
    unsupported, but a SHA-1 leaf still chains: Go reports the algorithm instead.
    """
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (TypeError, InvalidSignature):
        return False
    except ValueError:
        pass
    if not isinstance(cert.signature_hash_algorithm, hashes.SHA1):
        return False
    public = issuer.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA1())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA1()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _check_name_constraints(report: Report, leaf: x509.Certificate) -> None:
    found = nameconstraints.violation(leaf, report.path[1:])
    if found is None:
        return
    ca, message = found
    report.error(
        f"The CA {ca.subject.rfc4514_string()!r} has Name Constraints that do not allow "
        f"the certificate's names, so Go clients fail with \"{message}\". Issue the "
        "leaf for a name inside the CA's permitted names, or from a CA without such "
        "constraints."
    )


def _check_names(report: Report, leaf, cert_path: Path, names: list[str], fix: str) -> None:
    if not certs.has_san(leaf):
        report.error(
            f"The certificate {str(cert_path)!r} has no subjectAltName, only the Common "
            f"Name {certs.common_name(leaf)!r}, and Go clients since Go 1.15 reject it with "
            f"\"{GO_CN_ONLY}\" (the GODEBUG=x509ignoreCN=0 switch is gone since Go "
            f"1.17). Issue one with SANs: {fix}"
        )
    if not names:
        report.notes.append(
            "No --name given, so names were not checked: add --name HOST[:PORT] for "
            "each name clients use."
        )
    for name in names:
        host, _port = split_host_port(name)
        if certs.name_covered(leaf, host):
            continue
        message = go_hostname_error(leaf, host)
        if message == GO_CN_ONLY:
            continue  # Reported once above, with its fix.
        report.error(
            f"The certificate does not cover {host!r}, so Go clients connecting to it "
            f"fail with \"{message}\". Issue one that covers it: {fix}"
        )
        dns_names = certs.san_names(leaf)[0]
        if "IP SANs" in message and dns_names:
            report.notes.append(
                f"Instead of adding {host}, clients may connect by a DNS name that the "
                f"certificate covers: {', '.join(dns_names)}."
            )


def _check_validity(report: Report, cert, is_leaf: bool, at, fix: str) -> None:
    what = "The certificate" if is_leaf else f"The CA {cert.subject.rfc4514_string()!r}"
    remedy = f"Issue a new one: {fix}" if is_leaf else "Replace it with a current one."
    if at < cert.not_valid_before_utc:
        report.error(
            f"{what} is not valid before {long_date(cert.not_valid_before_utc)}, and this "
            f"host's clock reads {long_date(at)}, so Go clients fail with "
            f"\"{go_time_error(cert, at)}\". Check the clock on the server and the "
            "clients, or issue a certificate that starts earlier."
        )
    elif at > cert.not_valid_after_utc:
        report.error(
            f"{what} expired on {long_date(cert.not_valid_after_utc)}, so Go clients fail "
            f"with \"{go_time_error(cert, at)}\". {remedy}"
        )
    elif cert.not_valid_after_utc - at < EXPIRY_WARNING:
        days = (cert.not_valid_after_utc - at).days
        report.warning(
            f"{what} expires in {days} days, on {long_date(cert.not_valid_after_utc)}. {remedy}"
        )


def _check_algorithms(report: Report, cert, is_leaf: bool, fix: str) -> None:
    what = "The certificate" if is_leaf else f"The CA {cert.subject.rfc4514_string()!r}"
    self_signed_root = cert.issuer == cert.subject and not is_leaf
    # A root's own signature is never checked, so SHA-1 there is harmless.
    if isinstance(cert.signature_hash_algorithm, hashes.SHA1) and not self_signed_root:
        report.error(
            f"{what} is signed with SHA-1, which Go 1.18 and later reject as an insecure "
            f"algorithm. Issue one signed with SHA-256: {fix}"
        )
    public = cert.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        report.warning(ed25519_warning(what, fix))
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        report.error(
            f"{what} has a {public.key_size}-bit RSA key; use at least {MIN_RSA_BITS} bits. "
            f"Issue one with an ECDSA P-256 key: {fix}"
        )


def ed25519_warning(certificate_label: str, fix: str) -> str:
    """Build the warning for an Ed25519 certificate, which `serve` logs too."""
    # Checked against the gateway: skopeo 1.9 and dockerd 20.10 (both Go 1.19) push
    # and pull, and curl 7.88 (OpenSSL 3.0) connects over TLS 1.2 and 1.3. Chromium
    # 156 offers no signature algorithm for the key, so the handshake fails with
    # OpenSSL's NO_SUITABLE_SIGNATURE_ALGORITHM.
    return (
        f"{certificate_label} has an Ed25519 key. Go's crypto/tls (docker, "
        "containerd, podman, skopeo) and OpenSSL 1.1.1 or later (curl) accept it, "
        "but some clients and older TLS stacks do not, such as web browsers and "
        "OpenSSL before 1.1.1. Chromium gets no TLS connection "
        "(net::ERR_CONNECTION_CLOSED), so the status page /_gateway/ does not open "
        f"in a browser. For the widest support, issue one with an ECDSA P-256 key: {fix}"
    )


def _check_key_usage(report: Report, leaf, fix: str) -> None:
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # No EKU extension means any usage.
    allowed = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    if not allowed & set(usages):
        report.error(
            "The certificate's extended key usage does not include serverAuth, so Go "
            f"clients fail with \"{GO_KEY_USAGE}\". Issue a server certificate: {fix}"
        )


def resolve_paths(
    folder: Path, cert: Path | None, key: Path | None, ca: Path | None
) -> tuple[Path, Path | None, Path | None]:
    """Fill in defaults: the folder's own leaf without --cert, and its CA for that leaf.

    The folder's CA is the default also when --cert names the folder's own leaf.
    """
    own_leaf = folder / certs.LEAF_CERT
    if cert is None:
        cert = own_leaf
        if key is None and (folder / certs.LEAF_KEY).exists():
            key = folder / certs.LEAF_KEY
    if ca is None and _same_file(cert, own_leaf) and (folder / certs.CA_CERT).exists():
        ca = folder / certs.CA_CERT
    if not cert.exists():
        raise CertificateError(
            f"The certificate {str(cert)!r} was not found: give one with --cert FILE, or "
            f"issue one with: registry-gateway certs issue{dir_option(folder)} NAME ..."
        )
    return cert, key, ca


def _same_file(first: Path, second: Path) -> bool:
    try:
        return first.samefile(second)
    except OSError:
        return False
