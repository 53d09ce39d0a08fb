"""Helpers for the certificate tests: defective certificates and TLS servers for skopeo.

The defective certificates reproduce what users bring: a CN-only certificate, a
leaf for the wrong name, a leaf signed by an intermediate that is left out, an
expired leaf. Servers bind to 127.0.0.1 on a port the OS picks.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from gateway import certs, certstore, lab
from gateway.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `registry-gateway ARGV` in-process; return status, stdout and stderr."""
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def new_ca(folder: Path, constraints: list[str] | None = None) -> tuple[x509.Certificate, certs.PrivateKey]:
    certstore.init_ca(folder, name_constraints=constraints)
    chain, key = certstore.load_ca(folder)
    return chain[0], key


def write_pair(folder: Path, stem: str, chain: list[x509.Certificate], key) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    certs.write_certs(cert_path, chain)
    certs.write_key(key_path, key)
    return cert_path, key_path


def issue(ca_cert, ca_key, names: list[str], **options) -> tuple[x509.Certificate, certs.PrivateKey]:
    key = certs.generate_key()
    return certs.issue_leaf(ca_cert, ca_key, key, names, **options), key


def cn_only_leaf(ca_cert, ca_key, common_name: str) -> tuple[x509.Certificate, certs.PrivateKey]:
    """A leaf with the name only in the subject CN and no subjectAltName at all."""
    key = certs.generate_key()
    start = certs.now() - datetime.timedelta(hours=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def root_ca(folder: Path) -> tuple[x509.Certificate, certs.PrivateKey]:
    """A root CA that allows one intermediate below it, written to `folder/ca.crt`."""
    key = certs.generate_key()
    cert = intermediate_ca(None, key, name="test root CA")[0]
    certs.write_certs(folder / "ca.crt", [cert])
    return cert, key


def intermediate_ca(ca_cert, ca_key, name: str = "test intermediate CA") -> tuple[x509.Certificate, certs.PrivateKey]:
    """A CA signed by `ca_cert` (self-signed when None), for chains with a missing link."""
    key = certs.generate_key() if ca_cert is not None else ca_key
    start = certs.now() - datetime.timedelta(hours=1)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer = ca_cert.subject if ca_cert is not None else subject
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365))
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=0 if ca_cert is not None else 1),
            critical=True,
        )
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def trust_dir(folder: Path, ca_path: Path) -> Path:
    """A folder with only `ca.crt`, the layout skopeo's --cert-dir reads."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ca_path, folder / "ca.crt")
    return folder


@contextlib.contextmanager
def tls_registry(cert_path: Path, key_path: Path, workdir: Path):
    """The distribution registry serving its own TLS with the given pair (Go's TLS server)."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = lab.RegistryProcess(tls_cert=cert_path, tls_key=key_path, workdir=workdir)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def skopeo_push(layout: Path, address: str, cert_dir: Path, host: str | None = None):
    """Copy the OCI layout to `HOST:PORT/certs/test:v1` with only `cert_dir` trusted."""
    port = address.rsplit(":", 1)[1]
    target = f"{host or address.rsplit(':', 1)[0]}:{port}"
    return lab.skopeo(
        "copy", "--dest-cert-dir", str(cert_dir), f"oci:{layout}:v1",
        f"docker://{target}/certs/test:v1",
        timeout=120,
    )
