"""`certs init`, `certs issue`, `certs issue-client`: files, modes, SANs, and Go's verdict.

skopeo (Go's crypto/x509) is the client that decides whether a certificate works;
`openssl verify` is a second, independent checker of the chain.
"""

from __future__ import annotations

import ipaddress
import ssl
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway import certs, lab
from tests.certs_support import (
    cn_only_leaf,
    issue,
    new_ca,
    run_cli,
    skopeo_push,
    tls_registry,
    trust_dir,
    write_pair,
)

CN_ONLY = "x509: certificate relies on legacy Common Name field, use SANs instead"


def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oci")
    lab.build_oci_layout(folder, layer_sizes=(512, 2048))
    return folder


def test_init_file_modes(tmp_path, capsys):
    """A new CA key is 0400 and the certificate 0644, and the output names both files."""
    status, out, _ = run_cli(capsys, "certs", "init", "--dir", str(tmp_path))
    assert status == 0
    assert mode_of(tmp_path / "ca.key") == 0o400
    assert mode_of(tmp_path / "ca.crt") == 0o644
    assert f"'{tmp_path / 'ca.crt'}'" in out
    assert "valid until" in out


def test_init_ca_extensions(tmp_path):
    """The CA is a CA with keyCertSign, signs no sub-CAs, and lasts ten years."""
    ca_cert, _ = new_ca(tmp_path)
    basic = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    usage = ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert basic.ca is True
    assert basic.path_length == 0
    assert usage.key_cert_sign is True
    assert (ca_cert.not_valid_after_utc - ca_cert.not_valid_before_utc).days == certs.CA_DAYS


@pytest.mark.parametrize("key_type", ["rsa-2048", "ecdsa-p256"])
def test_init_key_types(tmp_path, capsys, key_type):
    """--key-type selects the CA key algorithm."""
    status, _, _ = run_cli(capsys, "certs", "init", "--dir", str(tmp_path), "--key-type", key_type)
    key = certs.load_key(tmp_path / "ca.key")
    assert status == 0
    assert (key.key_size == 2048) if key_type == "rsa-2048" else (key.curve.name == "secp256r1")


def test_init_no_overwrite(tmp_path, capsys):
    """A second init without --force fails, names the file and the command, and changes nothing."""
    run_cli(capsys, "certs", "init", "--dir", str(tmp_path))
    before = (tmp_path / "ca.crt").read_bytes(), (tmp_path / "ca.key").read_bytes()
    status, out, err = run_cli(capsys, "certs", "init", "--dir", str(tmp_path))
    assert status == 1
    assert err.startswith("Error: The file ")
    assert f"registry-gateway certs init --dir {tmp_path} --force" in err
    assert ((tmp_path / "ca.crt").read_bytes(), (tmp_path / "ca.key").read_bytes()) == before
    assert list(tmp_path.glob("*.bak-*")) == []


def test_init_force_warns_stale(tmp_path, capsys):
    """--force over a CA warns that old leaves and client trust are stale, with both commands."""
    run_cli(capsys, "certs", "init", "--dir", str(tmp_path))
    run_cli(capsys, "certs", "issue", "--dir", str(tmp_path), "registry.lan", "10.0.0.5")
    status, out, _ = run_cli(capsys, "certs", "init", "--dir", str(tmp_path), "--force")
    assert status == 0
    assert "Warning: The old CA was replaced, so every leaf it issued" in out
    assert f"every leaf it issued (such as {str(tmp_path / 'gateway.crt')!r})" in out
    assert "the trust each client installed for it are now stale" in out
    assert f"registry-gateway certs issue --dir {tmp_path} registry.lan 10.0.0.5 --force" in out
    assert f"registry-gateway certs export --dir {tmp_path} --host HOST:PORT --for CLIENT --install" in out


def test_init_fresh_no_warning(tmp_path, capsys):
    """A first init has nothing to make stale, so it prints no warning."""
    status, out, _ = run_cli(capsys, "certs", "init", "--dir", str(tmp_path))
    assert status == 0
    assert "Warning:" not in out


def test_init_force_backup(tmp_path, capsys):
    """--force moves the old CA files to backups holding the old bytes, then writes new ones."""
    run_cli(capsys, "certs", "init", "--dir", str(tmp_path))
    old_cert = (tmp_path / "ca.crt").read_bytes()
    old_key = (tmp_path / "ca.key").read_bytes()
    status, out, _ = run_cli(capsys, "certs", "init", "--dir", str(tmp_path), "--force")
    cert_backups = list(tmp_path.glob("ca.crt.bak-*"))
    key_backups = list(tmp_path.glob("ca.key.bak-*"))
    assert status == 0
    assert len(cert_backups) == 1
    assert len(key_backups) == 1
    assert cert_backups[0].read_bytes() == old_cert
    assert key_backups[0].read_bytes() == old_key
    assert mode_of(key_backups[0]) == 0o400
    assert (tmp_path / "ca.crt").read_bytes() != old_cert
    assert "Moved the old file to" in out


def test_issue_san_types(tmp_path, capsys):
    """Each name gets its SAN type, a port is dropped with a note, and no IP is a DNS SAN."""
    new_ca(tmp_path)
    status, out, _ = run_cli(
        capsys, "certs", "issue", "--dir", str(tmp_path),
        "Registry.Local", "192.0.2.10:5000", "::1", "[2001:db8::5]:5443",
    )
    leaf = certs.load_certs(tmp_path / "gateway.crt")[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert status == 0
    assert san.get_values_for_type(x509.DNSName) == ["registry.local"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("2001:db8::5"),
    ]
    assert "Note: Dropped the port from '192.0.2.10:5000'" in out
    assert ":5000" not in str(leaf.subject)


def test_issue_serve_hint_serves_ca(tmp_path, capsys, registry):
    """The serve command that `certs issue` prints serves the pair and its CA."""
    folder = tmp_path / "certs"
    new_ca(folder)
    status, out, _ = run_cli(capsys, "certs", "issue", "--dir", str(folder), "localhost", "127.0.0.1")
    hint = f"Serve it with: registry-gateway serve --certs-dir {folder} --name localhost"
    assert status == 0
    assert hint in out

    args = hint.split("registry-gateway serve ", 1)[1].split()
    gateway = lab.GatewayProcess([*args, "--listen", "127.0.0.1:0", "--upstream", registry.url])
    gateway.start()
    try:
        context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
        code, _, body = lab.http_get(f"https://localhost:{gateway.port}/_gateway/ca.crt", context=context)
    finally:
        gateway.stop()
    assert code == 200
    assert body == (folder / "ca.crt").read_bytes()
    assert "CA fingerprint (SHA-256)" in gateway.output


def test_issue_leaf_extensions(tmp_path, capsys):
    """The leaf has serverAuth, SKI/AKI, a 397-day life, and a 0600 key."""
    ca_cert, _ = new_ca(tmp_path)
    run_cli(capsys, "certs", "issue", "--dir", str(tmp_path), "localhost")
    leaf = certs.load_certs(tmp_path / "gateway.crt")[0]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert aki.key_identifier == ca_ski.digest
    assert leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days == 397
    assert mode_of(tmp_path / "gateway.key") == 0o600


def test_issue_openssl_verifies(tmp_path, capsys):
    """openssl, an independent checker, verifies the leaf against the CA."""
    new_ca(tmp_path)
    run_cli(capsys, "certs", "issue", "--dir", str(tmp_path), "localhost", "127.0.0.1")
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), "-purpose", "sslserver",
         str(tmp_path / "gateway.crt")],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": OK")


def test_issue_detects_names(tmp_path, capsys):
    """With no names, the host name and the loopback names are detected and printed."""
    import socket

    new_ca(tmp_path)
    status, out, _ = run_cli(capsys, "certs", "issue", "--dir", str(tmp_path))
    dns_names, addresses = certs.san_names(certs.load_certs(tmp_path / "gateway.crt")[0])
    assert status == 0
    assert "Note: No names given, so these were detected:" in out
    assert socket.gethostname().lower() in dns_names
    assert "localhost" in dns_names
    assert {"127.0.0.1", "::1"} <= set(addresses)


def test_issue_without_ca(tmp_path, capsys):
    """Issuing with no CA fails and names the init command."""
    status, _, err = run_cli(capsys, "certs", "issue", "--dir", str(tmp_path), "localhost")
    assert status == 1
    assert f"registry-gateway certs init --dir {tmp_path}" in err
    assert not (tmp_path / "gateway.key").exists()


def test_issue_no_overwrite_then_force(tmp_path, capsys):
    """A second issue needs --force, which leaves a backup of the old leaf and key."""
    new_ca(tmp_path)
    run_cli(capsys, "certs", "issue", "--dir", str(tmp_path), "localhost")
    old_key = (tmp_path / "gateway.key").read_bytes()
    status, _, err = run_cli(capsys, "certs", "issue", "--dir", str(tmp_path), "localhost")
    assert status == 1
    assert f"registry-gateway certs issue --dir {tmp_path} localhost --force" in err
    assert (tmp_path / "gateway.key").read_bytes() == old_key

    status, _, _ = run_cli(capsys, "certs", "issue", "--dir", str(tmp_path), "localhost", "--force")
    backups = list(tmp_path.glob("gateway.key.bak-*"))
    assert status == 0
    assert len(backups) == 1
    assert backups[0].read_bytes() == old_key
    assert mode_of(backups[0]) == 0o600
    assert mode_of(tmp_path / "gateway.key") == 0o600


@pytest.mark.parametrize("bad", ["https://registry.local", "bad name", "x-.local", "a..b", "under_score!.lan"])
def test_issue_invalid_name(tmp_path, capsys, bad):
    """An invalid name is rejected with the value quoted."""
    new_ca(tmp_path)
    status, _, err = run_cli(capsys, "certs", "issue", "--dir", str(tmp_path), bad)
    assert status == 1
    assert repr(bad) in err
    assert not (tmp_path / "gateway.crt").exists()


def test_issue_client_pair(tmp_path, capsys):
    """issue-client writes client.cert and client.key (0600) with clientAuth only."""
    new_ca(tmp_path)
    out_dir = tmp_path / "alice"
    status, out, _ = run_cli(
        capsys, "certs", "issue-client", "--dir", str(tmp_path), "--out", str(out_dir), "alice.lan"
    )
    cert = certs.load_certs(out_dir / "client.cert")[0]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert status == 0
    assert mode_of(out_dir / "client.key") == 0o600
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert certs.key_matches(cert, certs.load_key(out_dir / "client.key"))
    assert not list(out_dir.glob("*.crt"))


def test_skopeo_accepts_by_name_and_ip(tmp_path, capsys, layout):
    """skopeo pushes through the generated chain by DNS name and by IP address."""
    new_ca(tmp_path / "certs")
    run_cli(capsys, "certs", "issue", "--dir", str(tmp_path / "certs"), "localhost", "127.0.0.1")
    cert_dir = trust_dir(tmp_path / "trust", tmp_path / "certs" / "ca.crt")
    with tls_registry(
        tmp_path / "certs" / "gateway.crt", tmp_path / "certs" / "gateway.key", tmp_path / "reg"
    ) as registry:
        by_name = skopeo_push(layout, registry.address, cert_dir, host="localhost")
        by_ip = skopeo_push(layout, registry.address, cert_dir, host="127.0.0.1")
    assert by_name.returncode == 0, by_name.stderr
    assert by_ip.returncode == 0, by_ip.stderr


def test_skopeo_rejects_untrusted_ca(tmp_path, layout):
    """Paired failure: a client that trusts another CA gets 'signed by unknown authority'."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    leaf, key = issue(ca_cert, ca_key, ["127.0.0.1"])
    cert_path, key_path = write_pair(tmp_path, "leaf", [leaf], key)
    new_ca(tmp_path / "other")
    cert_dir = trust_dir(tmp_path / "trust", tmp_path / "other" / "ca.crt")
    with tls_registry(cert_path, key_path, tmp_path / "reg") as registry:
        result = skopeo_push(layout, registry.address, cert_dir)
    assert result.returncode == 1
    assert lab.skopeo_error(result).endswith(
        f'Get "https://{registry.address}/v2/": x509: certificate signed by unknown authority'
    )


@pytest.mark.parametrize(
    "case, host, expected",
    [
        ("cn-only", "127.0.0.1", CN_ONLY),
        (
            "wrong-san",
            "127.0.0.1",
            "x509: cannot validate certificate for 127.0.0.1 because it doesn't contain any IP SANs",
        ),
        ("wrong-san", "localhost", "x509: certificate is valid for wrong-name.invalid, not localhost"),
    ],
)
def test_skopeo_rejects_bad_names(tmp_path, layout, case, host, expected):
    """skopeo rejects a CN-only leaf and a wrong-SAN leaf with Go's exact error."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    if case == "cn-only":
        leaf, key = cn_only_leaf(ca_cert, ca_key, host)
    else:
        leaf, key = issue(ca_cert, ca_key, ["wrong-name.invalid"])
    cert_path, key_path = write_pair(tmp_path, "leaf", [leaf], key)
    cert_dir = trust_dir(tmp_path / "trust", tmp_path / "certs" / "ca.crt")
    with tls_registry(cert_path, key_path, tmp_path / "reg") as registry:
        result = skopeo_push(layout, registry.address, cert_dir, host=host)
    port = registry.port
    assert result.returncode == 1
    assert lab.skopeo_error(result).endswith(f'Get "https://{host}:{port}/v2/": {expected}')


def test_name_constraint_printed(tmp_path, capsys):
    """init --name-constraint says which names the CA may sign for, and the extension is critical."""
    status, out, _ = run_cli(
        capsys, "certs", "init", "--dir", str(tmp_path),
        "--name-constraint", "localhost", "--name-constraint", "127.0.0.0/8",
    )
    ca_cert = certs.load_certs(tmp_path / "ca.crt")[0]
    extension = ca_cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert status == 0
    assert extension.critical is True
    assert "DNS:localhost, IP:127.0.0.0/8" in out
    assert "leaked CA key" in out


def test_name_constraint_issue_outside(tmp_path, capsys):
    """certs issue rejects a name outside the CA's constraints before writing anything."""
    new_ca(tmp_path, constraints=["registry.lan"])
    status, _, err = run_cli(capsys, "certs", "issue", "--dir", str(tmp_path), "evil.example")
    assert status == 1
    assert "'evil.example' is outside the CA's name constraints" in err
    assert not (tmp_path / "gateway.crt").exists()


def test_name_constraint_dns_only_excludes_ips(tmp_path, capsys):
    """A DNS-only constraint excludes every IP range, and init says so."""
    status, out, _ = run_cli(
        capsys, "certs", "init", "--dir", str(tmp_path), "--name-constraint", "registry.lan"
    )
    ca_cert = certs.load_certs(tmp_path / "ca.crt")[0]
    constraints = ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    excluded = [str(name.value) for name in constraints.excluded_subtrees]
    assert status == 0
    assert excluded == ["0.0.0.0/0", "::/0"]
    assert "Note: The CA may sign no IP address SANs" in out
    status, _, err = run_cli(capsys, "certs", "issue", "--dir", str(tmp_path), "127.0.0.1")
    assert status == 1


@pytest.mark.parametrize("inside", [True, False])
def test_skopeo_name_constraints(tmp_path, layout, inside):
    """skopeo accepts a leaf inside the CA's constraints and rejects one outside them."""
    ca_cert, ca_key = new_ca(tmp_path / "certs", constraints=["localhost", "127.0.0.1"])
    names = ["localhost", "127.0.0.1"] if inside else ["localhost", "127.0.0.1", "outside.invalid"]
    leaf, key = issue(ca_cert, ca_key, names)
    cert_path, key_path = write_pair(tmp_path, "leaf", [leaf], key)
    cert_dir = trust_dir(tmp_path / "trust", tmp_path / "certs" / "ca.crt")
    with tls_registry(cert_path, key_path, tmp_path / "reg") as registry:
        result = skopeo_push(layout, registry.address, cert_dir, host="localhost")
    if inside:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1
        assert lab.skopeo_error(result).endswith(
            "x509: a root or intermediate certificate is not authorized to sign for this "
            'name: DNS name "outside.invalid" is not permitted by any constraint'
        )


def test_issue_ed25519_ca_key_rejected(tmp_path, capsys):
    """An Ed25519 CA key is rejected with its type named, because the gateway signs only with ECDSA or RSA."""
    key_path = tmp_path / "ca.key"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key_path)],
        check=True, capture_output=True, timeout=60,
    )
    key_path.chmod(0o600)
    subprocess.run(
        ["openssl", "req", "-x509", "-key", str(key_path), "-subj", "/CN=Ed25519 CA", "-days", "30",
         "-addext", "basicConstraints=critical,CA:TRUE", "-out", str(tmp_path / "ca.crt")],
        check=True, capture_output=True, timeout=60,
    )
    status, out, err = run_cli(capsys, "certs", "issue", "--dir", str(tmp_path), "localhost")
    assert status == 1
    assert err == (
        f"Error: The key in {str(key_path)!r} is Ed25519, but the gateway signs only with "
        "ECDSA or RSA keys: use an ECDSA P-256 key.\n"
    )
    assert not (tmp_path / "gateway.crt").exists()
