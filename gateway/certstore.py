"""The certs folder: create the local CA, issue server and client leaves.

Nothing here overwrites a key or certificate unless `force` is set, and then the
old files are first renamed to timestamped backups beside them. Keys are written
atomically with their final mode set before the first byte: 0600 for leaf keys,
0400 for the CA key.
"""

from __future__ import annotations

import datetime
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from gateway import certs
from gateway.certnames import (
    build_name_constraints,
    describe_constraints,
    detect_names,
    name_permitted,
    normalize_dns_name,
    parse_names,
)
from gateway.errors import CertificateError
from gateway.files import move_to_backup

CLIENT_CERT = "client.cert"
CLIENT_KEY = "client.key"
CA_KEY_MODE = 0o400
KEY_MODE = 0o600
# Browsers and Apple platforms reject server leaves valid for more than 398 days
# (the limit behind certs.LEAF_DAYS); Go clients set no limit.
MAX_BROWSER_DAYS = 398


@dataclass
class Issued:
    """The result of one issuing command: the certificate, its files, backups and notes."""

    cert: x509.Certificate
    cert_path: Path
    key_path: Path
    backups: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def make_room(paths: list[Path], force: bool, command: str) -> list[Path]:
    """Move existing `paths` to backups when `force` is set, else raise naming `command`."""
    existing = [path for path in paths if path.exists() or path.is_symlink()]
    if existing and not force:
        raise CertificateError(
            f"The file {str(existing[0])!r} already exists, so nothing was written. To "
            f"replace it, run: {command} --force (the old files move to a timestamped "
            "backup first)."
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return [move_to_backup(path, stamp) for path in existing]


def dir_option(folder: Path) -> str:
    """Format the `--dir` option for a suggested command, empty for the default folder."""
    return "" if Path(folder) == Path("certs") else f" --dir {folder}"


def init_ca(
    folder: Path,
    key_type: str = certs.DEFAULT_KEY_TYPE,
    name_constraints: list[str] | None = None,
    days: int = certs.CA_DAYS,
    force: bool = False,
) -> Issued:
    """Create the local CA in `folder`: `ca.crt` and `ca.key`."""
    folder = Path(folder)
    if days < 1:
        raise CertificateError(f"Invalid CA lifetime {days} days: give at least 1.")
    constraints, notes = (None, [])
    if name_constraints:
        constraints, notes = build_name_constraints(name_constraints)
    cert_path, key_path = folder / certs.CA_CERT, folder / certs.CA_KEY

    backups = make_room(
        [cert_path, key_path], force, f"registry-gateway certs init{dir_option(folder)}"
    )
    key = certs.generate_key(key_type)
    # A fresh suffix keeps each CA's subject unique. When a client still trusts an
    # older CA of the same name, Go then reports a plain "signed by unknown
    # authority" instead of a signature failure against the old CA.
    common_name = f"{certs.default_ca_name()} {secrets.token_hex(4)}"
    cert = certs.create_ca(key, common_name, days=days, name_constraints=constraints)

    certs.write_key(key_path, key, mode=CA_KEY_MODE)
    certs.write_certs(cert_path, [cert])
    return Issued(cert, cert_path, key_path, backups, notes)


def load_ca(folder: Path) -> tuple[list[x509.Certificate], certs.PrivateKey]:
    """Read the CA chain (issuing CA first) and its key from `folder`."""
    folder = Path(folder)
    cert_path, key_path = folder / certs.CA_CERT, folder / certs.CA_KEY
    if not cert_path.exists() or not key_path.exists():
        raise CertificateError(
            f"No local CA in {str(folder)!r}: create one with: "
            f"registry-gateway certs init{dir_option(folder)}"
        )
    chain = certs.load_certs(cert_path)
    key = certs.load_key(key_path)
    if not certs.key_matches(chain[0], key):
        raise CertificateError(
            f"The CA key {str(key_path)!r} does not belong to {str(cert_path)!r}: restore "
            "the matching pair, or create a new CA with: "
            f"registry-gateway certs init{dir_option(folder)} --force"
        )
    return chain, key


def ca_constraints(ca_cert: x509.Certificate) -> x509.NameConstraints | None:
    try:
        return ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def issue_server(
    folder: Path,
    names: list[str],
    days: int = certs.LEAF_DAYS,
    key_type: str = certs.DEFAULT_KEY_TYPE,
    force: bool = False,
) -> Issued:
    """Issue the gateway's leaf (`gateway.crt`, `gateway.key`) for `names`.

    With no names, the host's own names and addresses are detected. The chain file
    contains the leaf and then every CA in `ca.crt` that is not self-signed.
    """
    folder = Path(folder)
    notes: list[str] = []
    if not names:
        names = detect_names()
        notes.append(f"No names given, so these were detected: {', '.join(names)}.")
    parsed = parse_names(names)
    notes += parsed.notes
    _check_days(days)
    if days > MAX_BROWSER_DAYS:
        notes.append(
            f"A lifetime of {days} days is over the {MAX_BROWSER_DAYS} that browsers and "
            "Apple platforms accept; Go clients such as docker still accept it."
        )
    ca_chain, ca_key = load_ca(folder)
    _check_constraints(ca_chain[0], parsed.all(), folder)
    cert_path, key_path = folder / certs.LEAF_CERT, folder / certs.LEAF_KEY

    command = f"registry-gateway certs issue{dir_option(folder)} {' '.join(names)}"
    backups = make_room([cert_path, key_path], force, command)
    key = certs.generate_key(key_type)
    leaf = certs.issue_leaf(ca_chain[0], ca_key, key, parsed.all(), days=days)
    intermediates = [c for c in ca_chain if c.issuer != c.subject]

    certs.write_key(key_path, key, mode=KEY_MODE)
    certs.write_certs(cert_path, [leaf, *intermediates])
    notes += _capped_note(leaf, days)
    return Issued(leaf, cert_path, key_path, backups, notes, parsed.all())


def issue_client(
    folder: Path,
    name: str,
    days: int = certs.LEAF_DAYS,
    out: Path | None = None,
    force: bool = False,
) -> Issued:
    """Issue a client pair `client.cert` / `client.key`, the names Docker's certs.d reads.

    Docker takes every `*.crt` in a certs.d folder for a CA, so a client certificate
    must end in `.cert` with a `.key` of the same stem (Docker's "Verify repository
    client certificates" documentation).
    """
    folder = Path(folder)
    out = Path(out) if out is not None else folder
    identity = normalize_dns_name(name)
    _check_days(days)
    ca_chain, ca_key = load_ca(folder)
    _check_constraints(ca_chain[0], [identity], folder)
    cert_path, key_path = out / CLIENT_CERT, out / CLIENT_KEY

    out_option = "" if out == folder else f" --out {out}"
    command = f"registry-gateway certs issue-client{dir_option(folder)}{out_option} {name}"
    backups = make_room([cert_path, key_path], force, command)
    key = certs.generate_key()
    cert = certs.issue_leaf(ca_chain[0], ca_key, key, [identity], days=days, client=True)
    intermediates = [c for c in ca_chain if c.issuer != c.subject]

    certs.write_key(key_path, key, mode=KEY_MODE)
    certs.write_certs(cert_path, [cert, *intermediates])
    return Issued(cert, cert_path, key_path, backups, _capped_note(cert, days), [identity])


def _check_days(days: int) -> None:
    if days < 1:
        raise CertificateError(f"Invalid lifetime {days} days: give --days 1 or more.")


def _check_constraints(ca_cert: x509.Certificate, names: list[str], folder: Path) -> None:
    constraints = ca_constraints(ca_cert)
    if constraints is None:
        return
    outside = [name for name in names if not name_permitted(constraints, name)]
    if outside:
        raise CertificateError(
            f"The name {outside[0]!r} is outside the CA's name constraints "
            f"({describe_constraints(constraints)}), so clients would reject the "
            "certificate. Issue for a permitted name, or create a CA that allows it "
            f"with: registry-gateway certs init{dir_option(folder)} --force "
            "--name-constraint ..."
        )


def _capped_note(cert: x509.Certificate, days: int) -> list[str]:
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if lifetime < datetime.timedelta(days=days):
        return [
            f"The lifetime was cut to {lifetime.days} days, because a leaf cannot "
            "outlive the CA that signs it."
        ]
    return []


def long_date(moment: datetime.datetime) -> str:
    """Format a time as `Thursday, 3 December 2026 22:40 UTC`."""
    moment = moment.astimezone(datetime.timezone.utc)
    return f"{moment:%A}, {moment.day} {moment:%B %Y %H:%M} UTC"
