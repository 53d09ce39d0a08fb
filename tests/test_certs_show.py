"""`certs show`: what is in the certs folder, with fingerprints and dates, never key material."""

from __future__ import annotations

import subprocess

from gateway import certs
from tests.certs_support import new_ca, run_cli


def test_show_lists_folder(tmp_path, capsys):
    """show prints each file with its role, SANs, SHA-256 fingerprint and long-form expiry."""
    folder = tmp_path / "certs"
    new_ca(folder, constraints=["registry.lan", "10.0.0.0/8"])
    run_cli(capsys, "certs", "issue", "--dir", str(folder), "registry.lan", "10.0.0.5")
    status, out, _ = run_cli(capsys, "certs", "show", "--dir", str(folder))
    leaf = certs.load_certs(folder / "gateway.crt")[0]
    expiry = leaf.not_valid_after_utc
    assert status == 0
    assert f"{folder / 'ca.crt'}\n  Root CA: CN=registry-gateway local CA" in out
    assert "Name constraints: DNS:registry.lan, IP:10.0.0.0/8" in out
    assert "  Server certificate: CN=registry.lan,O=registry-gateway\n" in out
    assert "  SANs: DNS:registry.lan, IP:10.0.0.5\n" in out
    assert f"SHA-256 fingerprint: {certs.fingerprint(leaf)}" in out
    assert f"Valid until: {expiry:%A}, {expiry.day} {expiry:%B %Y %H:%M} UTC (in 396 days)" in out
    assert f"Private key: ECDSA secp256r1, mode 0400, matches {folder / 'ca.crt'}" in out


def test_show_fingerprint_matches_openssl(tmp_path, capsys):
    """The fingerprint equals what `openssl x509 -fingerprint -sha256` prints."""
    folder = tmp_path / "certs"
    new_ca(folder)
    result = subprocess.run(
        ["openssl", "x509", "-in", str(folder / "ca.crt"), "-noout", "-fingerprint", "-sha256"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    _, out, _ = run_cli(capsys, "certs", "show", "--dir", str(folder))
    assert result.stdout.strip().split("=", 1)[1] in out


def test_show_no_key_material(tmp_path, capsys):
    """No line of the output contains PEM or key bytes."""
    folder = tmp_path / "certs"
    new_ca(folder)
    run_cli(capsys, "certs", "issue", "--dir", str(folder), "localhost")
    _, out, _ = run_cli(capsys, "certs", "show", "--dir", str(folder))
    key_body = (folder / "gateway.key").read_text().splitlines()[1]
    assert "BEGIN" not in out
    assert key_body not in out


def test_show_skips_backups(tmp_path, capsys):
    """Backups left by --force are counted, not listed."""
    folder = tmp_path / "certs"
    new_ca(folder)
    run_cli(capsys, "certs", "init", "--dir", str(folder), "--force")
    _, out, _ = run_cli(capsys, "certs", "show", "--dir", str(folder))
    assert "2 backup file(s) (*.bak-*) not shown." in out
    assert ".bak-" not in out.replace("(*.bak-*)", "")


def test_show_missing_folder(tmp_path, capsys):
    """A missing folder gives one error line with the init command."""
    status, _, err = run_cli(capsys, "certs", "show", "--dir", str(tmp_path / "none"))
    assert status == 1
    assert f"registry-gateway certs init --dir {tmp_path / 'none'}" in err


def test_show_empty_folder(tmp_path, capsys):
    """An empty folder gets one line saying so, with the init command, and exit 0."""
    folder = tmp_path / "empty"
    folder.mkdir()
    status, out, err = run_cli(capsys, "certs", "show", "--dir", str(folder))
    assert status == 0
    assert err == ""
    assert out == (
        f"The folder {str(folder)!r} contains no certificates or keys. Create a local CA "
        f"in it with: registry-gateway certs init --dir {folder}\n"
    )


def test_show_ed25519_key(tmp_path, capsys):
    """An Ed25519 key that serve accepts is described, and matched to its certificate."""
    folder = tmp_path / "certs"
    folder.mkdir()
    key_path = folder / "gateway.key"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key_path)],
        check=True, capture_output=True, timeout=60,
    )
    key_path.chmod(0o600)
    subprocess.run(
        ["openssl", "req", "-x509", "-key", str(key_path), "-subj", "/CN=localhost", "-days", "30",
         "-addext", "subjectAltName=DNS:localhost", "-out", str(folder / "gateway.crt")],
        check=True, capture_output=True, timeout=60,
    )
    status, out, _ = run_cli(capsys, "certs", "show", "--dir", str(folder))
    assert status == 0
    assert f"Private key: Ed25519, mode 0600, matches {folder / 'gateway.crt'}" in out
    assert "could not be read" not in out
