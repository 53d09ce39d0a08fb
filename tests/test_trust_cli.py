"""`registry-gateway trust`: fingerprint checks, the files it writes, the fallback CA.

The gateway runs as a subprocess on 127.0.0.1: the session's `gateway_process`,
named localhost. The servers that are not ours are the real distribution
registry serving its own TLS, and a small stdlib HTTPS server that serves a CA
which did not sign its certificate.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway import certs, lab
from gateway.trust import normalize_fingerprint
from gateway.trust_cli import LABELS
from tests.certs_support import issue, new_ca, run_cli, tls_registry, write_pair


@pytest.fixture(scope="module")
def ca_hex(local_ca) -> str:
    """The session CA's fingerprint as `registry-gateway trust --fingerprint` takes it."""
    ca = certs.load_certs(local_ca / certs.CA_CERT)[0]
    return certs.fingerprint(ca).replace(":", "").lower()


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trust-image")
    lab.build_oci_layout(folder, layer_sizes=(800, 30_000), seed=81)
    return folder


def authority_of(gateway_process) -> str:
    return f"localhost:{gateway_process.port}"


def files_under(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def wrong(hex_digits: str) -> str:
    return ("0" if hex_digits[0] != "0" else "1") + hex_digits[1:]


def test_printed_command_matches_fingerprint(gateway_process, ca_hex):
    """The trust command serve prints carries the CA fingerprint this test compares with."""
    assert f"--fingerprint {ca_hex} --for docker --install" in gateway_process.output


@pytest.mark.parametrize(
    "given",
    ["lower", "upper-colons", "mixed-colons"],
)
def test_fingerprint_forms_accepted(gateway_process, local_ca, ca_hex, given, tmp_path, capsys):
    """Hex with or without colons, in any case, is accepted and writes the podman layout."""
    colon = certs.fingerprint(certs.load_certs(local_ca / certs.CA_CERT)[0])
    value = {"lower": ca_hex, "upper-colons": colon, "mixed-colons": colon[:20].lower() + colon[20:]}[given]
    authority = authority_of(gateway_process)
    status, out, err = run_cli(
        capsys, "trust", authority, "--fingerprint", value, "--for", "podman", "--out", str(tmp_path)
    )
    assert status == 0, err
    assert "The fingerprint matches --fingerprint." in out
    assert files_under(tmp_path) == [f"etc/containers/certs.d/{authority}/ca.crt"]
    written = tmp_path / "etc/containers/certs.d" / authority / "ca.crt"
    assert written.read_bytes() == (local_ca / certs.CA_CERT).read_bytes()
    assert "podman/skopeo: would succeed" in out


@pytest.mark.parametrize("value", ["abc", "g" * 64, "ab" * 31, "ab" * 33])
def test_fingerprint_invalid_exits_2(value, capsys):
    """A value that is not 64 hex digits is an argument error, before any connection."""
    with pytest.raises(SystemExit) as exited:
        run_cli(capsys, "trust", "localhost:1", "--fingerprint", value)
    assert exited.value.code == 2
    assert "give the CA's SHA-256 fingerprint as 64 hex digits" in capsys.readouterr().err


def test_normalize_fingerprint_strips_colons():
    assert normalize_fingerprint("AB:cd:" + "00:" * 29 + "Ef") == "abcd" + "00" * 29 + "ef"


def test_wrong_fingerprint_writes_nothing(gateway_process, ca_hex, tmp_path, capsys):
    """A mismatch exits 1, prints both fingerprints and leaves the tree empty."""
    authority = authority_of(gateway_process)
    bad = wrong(ca_hex)
    status, out, err = run_cli(
        capsys, "trust", authority, "--fingerprint", bad, "--for", "all", "--out", str(tmp_path / "out")
    )
    assert status == 1
    assert err.count("\n") == 1
    assert err.startswith("Error: The CA from https://localhost:")
    served = ":".join(ca_hex[i : i + 2] for i in range(0, 64, 2)).upper()
    expected = ":".join(bad[i : i + 2] for i in range(0, 64, 2)).upper()
    assert f"has the SHA-256 fingerprint {served}, but --fingerprint gave {expected}" in err
    assert "nothing was written" in err
    assert not (tmp_path / "out").exists()


def test_skopeo_trusts_podman_layout(gateway_process, ca_hex, layout, tmp_path, capsys):
    """skopeo with --dest-cert-dir at the podman folder --out wrote pushes; without it, it fails."""
    authority = authority_of(gateway_process)
    reference = f"docker://{authority}/trust/skopeo:v1"
    before = lab.skopeo("copy", f"oci:{layout}:v1", reference)

    status, out, err = run_cli(
        capsys, "trust", authority, "--fingerprint", ca_hex, "--for", "podman", "--out", str(tmp_path)
    )
    cert_dir = tmp_path / "etc/containers/certs.d" / authority
    after = lab.skopeo("copy", "--dest-cert-dir", str(cert_dir), f"oci:{layout}:v1", reference)

    assert before.returncode == 1
    assert lab.skopeo_error(before).endswith(
        f'Get "https://{authority}/v2/": x509: certificate signed by unknown authority'
    )
    assert status == 0, err
    assert after.returncode == 0, after.stderr


def test_no_fingerprint_declined_writes_nothing(gateway_process, tmp_path, capsys, monkeypatch):
    """Without --fingerprint the user is asked, and any reply but y writes nothing."""
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    status, out, err = run_cli(
        capsys, "trust", authority_of(gateway_process), "--out", str(tmp_path / "out")
    )
    assert status == 1
    assert "this trusts on first use" in out
    assert "[y/N]" in out
    assert err == (
        "Error: The CA was not confirmed, so nothing was written. Rerun with "
        "--fingerprint SHA256 (from the gateway host), or answer y.\n"
    )
    assert not (tmp_path / "out").exists()


def test_no_fingerprint_confirmed_writes(gateway_process, tmp_path, capsys, monkeypatch):
    """The reply y writes the files."""
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    authority = authority_of(gateway_process)
    status, out, err = run_cli(capsys, "trust", authority, "--out", str(tmp_path))
    assert status == 0, err
    assert files_under(tmp_path) == [f"etc/docker/certs.d/{authority}/ca.crt"]


def test_yes_skips_question(gateway_process, tmp_path, capsys, monkeypatch):
    """--yes writes without reading standard input, still saying it trusts on first use."""
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    authority = authority_of(gateway_process)
    status, out, err = run_cli(capsys, "trust", authority, "--yes", "--out", str(tmp_path))
    assert status == 0, err
    assert "[y/N]" not in out
    assert "Note: No --fingerprint was given, so this trusts on first use" in out
    assert "Compare the fingerprint above with the one shown on the gateway host itself" in out
    assert "registry-gateway serve printed at start-up" in out
    assert "registry-gateway certs show --dir DIR run there" in out
    assert f"Do not compare it with the status page https://{authority}/_gateway/" in out
    assert "or with its status page" not in out
    assert files_under(tmp_path) == [f"etc/docker/certs.d/{authority}/ca.crt"]


def test_dry_run_writes_nothing(gateway_process, ca_hex, tmp_path, capsys, monkeypatch):
    """Without --install or --out, the paths are shown and the probe runs; nothing is written."""
    monkeypatch.chdir(tmp_path)
    authority = authority_of(gateway_process)
    status, out, err = run_cli(capsys, "trust", authority, "--fingerprint", ca_hex)
    assert status == 0, err
    assert f"  /etc/docker/certs.d/{authority}/ca.crt" in out
    assert "  docker: would succeed" in out
    assert out.rstrip().endswith("--out DIR for a tree to copy.")
    assert list(tmp_path.iterdir()) == []


def test_install_backs_up_different_file(gateway_process, local_ca, ca_hex, tmp_path, capsys):
    """--install --root: a second run leaves the same file alone; a different file moves to a backup."""
    authority = authority_of(gateway_process)
    args = ("trust", authority, "--fingerprint", ca_hex, "--for", "all", "--install", "--root", str(tmp_path))
    first = run_cli(capsys, *args)
    second = run_cli(capsys, *args)
    docker_ca = tmp_path / "etc/docker/certs.d" / authority / "ca.crt"
    docker_ca.write_text("an old CA\n")
    third = run_cli(capsys, *args)

    assert first[0] == 0, first[2]
    assert sorted(files_under(tmp_path)) == sorted(
        [
            f"etc/containerd/certs.d/{authority}/ca.crt",
            f"etc/containerd/certs.d/{authority}/hosts.toml",
            f"etc/containers/certs.d/{authority}/ca.crt",
            f"etc/docker/certs.d/{authority}/ca.crt",
            *[p for p in files_under(tmp_path) if ".bak-" in p],
        ]
    )
    assert second[0] == 0, second[2]
    assert second[1].count("  Unchanged ") == 4
    assert "  Wrote " not in second[1]
    assert third[0] == 0, third[2]
    backups = list(docker_ca.parent.glob("ca.crt.bak-*"))
    assert len(backups) == 1
    assert backups[0].read_text() == "an old CA\n"
    assert (
        f"  Replaced {str(docker_ca)!r} (for /etc/docker/certs.d/{authority}/ca.crt). The "
        f"old file differed, so it was moved to the backup {str(backups[0])!r}."
    ) in third[1]
    assert docker_ca.read_bytes() == (local_ca / certs.CA_CERT).read_bytes()
    assert "containerd/ctr: would succeed" in third[1]


USER_HOSTS_TOML = """# The corporate mirror first, then the registry itself.
server = "https://{authority}"

[host."https://mirror.corp.example"]
  capabilities = ["pull", "resolve"]
  override_path = true
"""


def test_install_keeps_user_hosts_toml(gateway_process, ca_hex, tmp_path, capsys):
    """A different hosts.toml is the user's: trust exits 1, writes nothing, names the merge command."""
    authority = f"127.0.0.1:{gateway_process.port}"
    folder = tmp_path / "etc/containerd/certs.d" / authority
    folder.mkdir(parents=True)
    hosts = folder / "hosts.toml"
    hosts.write_text(USER_HOSTS_TOML.format(authority=authority))
    status, out, err = run_cli(
        capsys, "trust", authority, "--fingerprint", ca_hex, "--for", "containerd",
        "--install", "--root", str(tmp_path),
    )
    colon = ":".join(ca_hex[i : i + 2] for i in range(0, 64, 2)).upper()
    assert status == 1
    assert err.startswith(f"Error: The file {str(hosts)!r} already exists and differs")
    assert "may configure other registries or mirrors, so nothing was written" in err
    assert f"registry-gateway snippet containerd {authority} --ca CA --merge {hosts} --write" in err
    assert f"registry-gateway trust {authority} --fingerprint {colon} --for containerd --out DIR" in err
    assert f"DIR/etc/containerd/certs.d/{authority}/ca.crt" in err
    assert hosts.read_text() == USER_HOSTS_TOML.format(authority=authority)
    assert files_under(tmp_path) == [f"etc/containerd/certs.d/{authority}/hosts.toml"]
    assert "Wrote" not in out


def test_install_backup_of_ca_printed(gateway_process, local_ca, ca_hex, tmp_path, capsys):
    """A different containerd ca.crt beside trust's own hosts.toml is replaced, naming the backup."""
    authority = f"127.0.0.1:{gateway_process.port}"
    args = ("trust", authority, "--fingerprint", ca_hex, "--for", "containerd", "--install", "--root", str(tmp_path))
    first = run_cli(capsys, *args)
    ca_file = tmp_path / "etc/containerd/certs.d" / authority / "ca.crt"
    ca_file.write_text("an old CA\n")
    second = run_cli(capsys, *args)
    backups = list(ca_file.parent.glob("ca.crt.bak-*"))
    assert first[0] == 0, first[2]
    assert second[0] == 0, second[2]
    assert len(backups) == 1
    assert backups[0].read_text() == "an old CA\n"
    assert f"  Replaced {str(ca_file)!r} (for /etc/containerd/certs.d/{authority}/ca.crt)" in second[1]
    assert f"was moved to the backup {str(backups[0])!r}." in second[1]
    assert f"  Unchanged {str(ca_file.parent / 'hosts.toml')!r}" in second[1]
    assert ca_file.read_bytes() == (local_ca / certs.CA_CERT).read_bytes()


def test_root_needs_install(capsys):
    with pytest.raises(SystemExit) as exited:
        run_cli(capsys, "trust", "localhost:1", "--root", "/tmp", "--out", "/tmp/x")
    assert exited.value.code == 2
    assert "--root goes with --install" in capsys.readouterr().err


def test_windows_layout_has_no_colon(gateway_process, ca_hex, tmp_path, capsys):
    """--platform windows writes the certs.d folder without the colon and prints the restart."""
    authority = authority_of(gateway_process)
    status, out, err = run_cli(
        capsys, "trust", authority, "--fingerprint", ca_hex, "--platform", "windows",
        "--for", "all", "--out", str(tmp_path),
    )
    folder = authority.replace(":", "")
    assert status == 0, err
    assert f"C/ProgramData/docker/certs.d/{folder}/ca.crt" in files_under(tmp_path)
    assert "Then run: Restart-Service docker" in out
    assert "Note: containerd has no CA layout for --platform windows, so it was skipped" in out


def test_windows_install_refused(gateway_process, ca_hex, capsys):
    status, _, err = run_cli(
        capsys, "trust", authority_of(gateway_process), "--fingerprint", ca_hex,
        "--platform", "windows", "--install",
    )
    assert status == 1
    assert "write a tree with --out DIR" in err


def test_plain_http_port_rejected(registry, tmp_path, capsys):
    """The plain-HTTP registry port fails the TLS handshake; nothing is written."""
    status, _, err = run_cli(
        capsys, "trust", registry.address, "--yes", "--out", str(tmp_path / "out")
    )
    assert status == 1
    assert err.startswith(f"Error: Fetching https://{registry.address}/_gateway/ca.crt failed: the TLS handshake failed")
    assert f"registry-gateway probe {registry.address}" in err
    assert not (tmp_path / "out").exists()


def test_refused_port_rejected(tmp_path, capsys):
    status, _, err = run_cli(capsys, "trust", "127.0.0.1:1", "--yes", "--out", str(tmp_path / "out"))
    assert status == 1
    assert "Connection refused" in err
    assert not (tmp_path / "out").exists()


def test_name_not_covered_writes_nothing(tmp_path, capsys):
    """A leaf for localhost only, reached as 127.0.0.1: refused before writing, with Go's text."""
    ca_cert, ca_key = new_ca(tmp_path / "ca")
    leaf, key = issue(ca_cert, ca_key, ["localhost"])
    cert_path, key_path = write_pair(tmp_path, "registry", [leaf, ca_cert], key)
    with tls_registry(cert_path, key_path, tmp_path / "registry") as server:
        status, _, err = run_cli(
            capsys, "trust", f"127.0.0.1:{server.port}", "--yes", "--out", str(tmp_path / "out")
        )
    assert status == 1
    assert f"The certificate 127.0.0.1:{server.port} presented does not cover '127.0.0.1'" in err
    assert "x509: cannot validate certificate for 127.0.0.1 because it doesn't contain any IP SANs" in err
    assert not (tmp_path / "out").exists()


def test_name_not_covered_keeps_names(tmp_path, capsys):
    """The fix for a missing name keeps the certificate's names: serve --name, or issue with all."""
    ca_cert, ca_key = new_ca(tmp_path / "ca")
    leaf, key = issue(ca_cert, ca_key, ["localhost", "registry.example"])
    cert_path, key_path = write_pair(tmp_path, "registry", [leaf, ca_cert], key)
    with tls_registry(cert_path, key_path, tmp_path / "registry") as server:
        status, _, err = run_cli(
            capsys, "trust", f"127.0.0.1:{server.port}", "--yes", "--out", str(tmp_path / "out")
        )
    assert status == 1
    assert "registry-gateway serve ... --name localhost --name registry.example --name 127.0.0.1" in err
    assert "serve reissues its leaf keeping every old name" in err
    assert err.rstrip().endswith("registry-gateway certs issue --force localhost registry.example 127.0.0.1")
    assert "certs issue --force 127.0.0.1 ..." not in err


# Servers that are not ours: no /_gateway/ca.crt.


def test_foreign_registry_leaf_flagged(tmp_path, capsys):
    """The real registry serving a CA-signed leaf alone: the leaf is offered and flagged."""
    ca_cert, ca_key = new_ca(tmp_path / "ca")
    leaf, key = issue(ca_cert, ca_key, ["localhost", "127.0.0.1"])
    cert_path, key_path = write_pair(tmp_path, "registry", [leaf], key)
    with tls_registry(cert_path, key_path, tmp_path / "registry") as server:
        authority = f"localhost:{server.port}"
        status, out, err = run_cli(
            capsys, "trust", authority, "--yes", "--for", "podman", "--out", str(tmp_path / "out")
        )
    written = tmp_path / "out/etc/containers/certs.d" / authority / "ca.crt"
    assert status == 0, err
    assert f"Note: https://{authority}/_gateway/ca.crt answered 404" in out
    assert "Warning: The certificate offered" in out
    assert "is the server's leaf certificate, not a CA" in out
    assert "once it is renewed" in out
    assert certs.load_certs(written) == [leaf]
    assert "podman/skopeo: would succeed" in out


def test_foreign_registry_chain_offers_top(tmp_path, capsys):
    """A chain of leaf and intermediate: the intermediate is offered, with its expiry warning."""
    from tests.certs_support import intermediate_ca, root_ca

    root_cert, root_key = root_ca(tmp_path)
    middle, middle_key = intermediate_ca(root_cert, root_key)
    leaf, key = issue(middle, middle_key, ["localhost"])
    cert_path, key_path = write_pair(tmp_path, "registry", [leaf, middle], key)
    with tls_registry(cert_path, key_path, tmp_path / "registry") as server:
        authority = f"localhost:{server.port}"
        fingerprint = certs.fingerprint(middle)
        status, out, err = run_cli(
            capsys, "trust", authority, "--fingerprint", fingerprint, "--for", "podman",
            "--out", str(tmp_path / "out"),
        )
    assert status == 0, err
    assert "is an intermediate" in out
    assert "is the server's leaf certificate" not in out
    written = tmp_path / "out/etc/containers/certs.d" / authority / "ca.crt"
    assert certs.load_certs(written) == [middle]


class _CAHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - the stdlib names it so
        self.send_response(200 if self.path == "/_gateway/ca.crt" else 404)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def https_server(cert_path: Path, key_path: Path, ca_body: bytes):
    """A stdlib HTTPS server on 127.0.0.1 that serves `ca_body` as /_gateway/ca.crt."""
    handler = type("Handler", (_CAHandler,), {"body": ca_body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_served_ca_not_signing_leaf_rejected(tmp_path, capsys):
    """A /_gateway/ca.crt that did not sign the presented leaf is refused, even with its fingerprint."""
    ca_cert, ca_key = new_ca(tmp_path / "real")
    other_ca, _ = new_ca(tmp_path / "other")
    leaf, key = issue(ca_cert, ca_key, ["localhost"])
    cert_path, key_path = write_pair(tmp_path, "server", [leaf], key)
    with https_server(cert_path, key_path, certs.cert_pem(other_ca)) as port:
        status, out, err = run_cli(
            capsys, "trust", f"localhost:{port}", "--fingerprint", certs.fingerprint(other_ca),
            "--out", str(tmp_path / "out"),
        )
    assert status == 1
    assert "The fingerprint matches --fingerprint." in out
    assert f"The certificate localhost:{port} presented does not chain to the CA from" in err
    assert "x509: certificate signed by unknown authority" in err
    assert not (tmp_path / "out").exists()


def test_served_ca_not_pem_falls_back(tmp_path, capsys):
    """A 200 response that is not a certificate: the presented chain's top is offered instead."""
    ca_cert, ca_key = new_ca(tmp_path / "real")
    leaf, key = issue(ca_cert, ca_key, ["localhost"])
    cert_path, key_path = write_pair(tmp_path, "server", [leaf, ca_cert], key)
    with https_server(cert_path, key_path, b"<html>hello</html>") as port:
        status, out, err = run_cli(
            capsys, "trust", f"localhost:{port}", "--fingerprint", certs.fingerprint(ca_cert),
            "--for", "podman", "--out", str(tmp_path / "out"),
        )
    # The stdlib server is no registry, so the probe afterwards reports a failure.
    assert status == 1
    assert "answered 200, but not with a PEM certificate" in out
    assert "Warning: The certificate offered" not in out
    written = tmp_path / "out/etc/containers/certs.d" / f"localhost:{port}" / "ca.crt"
    assert certs.load_certs(written) == [ca_cert]
    assert "podman/skopeo: would still fail" in out
    assert err.startswith("Error: The CA was written, but 1 client(s) would still fail.")


@pytest.mark.parametrize(
    ("client", "folder"),
    [("docker", "docker/certs.d"), ("podman", "containers/certs.d")],
)
def test_rootless_layout_in_home(gateway_process, ca_hex, client, folder, tmp_path, capsys, monkeypatch):
    """--platform rootless writes under the user's ~/.config, mirrored under --out."""
    home = tmp_path / "home" / "builder"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    authority = authority_of(gateway_process)
    out_dir = tmp_path / "out"
    status, out, err = run_cli(
        capsys, "trust", authority, "--fingerprint", ca_hex, "--for", client,
        "--platform", "rootless", "--out", str(out_dir),
    )
    expected = Path(str(out_dir) + str(home)) / ".config" / folder / authority / "ca.crt"
    assert status == 0, err
    assert files_under(out_dir) == [str(expected.relative_to(out_dir))]
    assert f"{LABELS[client]}: would succeed" in out


def test_desktop_docker_uses_system_store(gateway_process, ca_hex, tmp_path, capsys):
    """Docker Desktop trusts the host's store, so the system layout and its commands are given."""
    authority = authority_of(gateway_process)
    status, out, err = run_cli(
        capsys, "trust", authority, "--fingerprint", ca_hex, "--for", "docker",
        "--platform", "desktop", "--out", str(tmp_path),
    )
    name = f"registry-gateway-localhost_{gateway_process.port}.crt"
    assert status == 0, err
    assert files_under(tmp_path) == [
        f"etc/pki/ca-trust/source/anchors/{name}",
        f"usr/local/share/ca-certificates/{name}",
    ]
    assert "Then run: security add-trusted-cert -d -r trustRoot" in out
    assert "docker: would succeed" in out


def test_desktop_commands_name_written_file(gateway_process, ca_hex, tmp_path, capsys):
    """The Windows and macOS import commands name the CA file trust wrote, not a bare ca.crt."""
    authority = authority_of(gateway_process)
    status, out, err = run_cli(
        capsys, "trust", authority, "--fingerprint", ca_hex, "--for", "docker",
        "--platform", "desktop", "--out", str(tmp_path),
    )
    written = tmp_path / f"usr/local/share/ca-certificates/registry-gateway-localhost_{gateway_process.port}.crt"
    assert status == 0, err
    assert f"Then run: Import-Certificate -FilePath {written} -CertStoreLocation" in out
    assert f"-k /Library/Keychains/System.keychain {written}   # macOS" in out
    assert " ca.crt " not in out
    assert "CA_FILE" not in out


def test_windows_note_names_export_command(gateway_process, ca_hex, tmp_path, capsys):
    """The Docker Desktop note names the certs export command with the CA file written."""
    authority = authority_of(gateway_process)
    status, out, err = run_cli(
        capsys, "trust", authority, "--fingerprint", ca_hex, "--platform", "windows",
        "--for", "docker", "--out", str(tmp_path),
    )
    written = tmp_path / "C/ProgramData/docker/certs.d" / authority.replace(":", "") / "ca.crt"
    assert status == 0, err
    assert (
        f"registry-gateway certs export --host {authority} --for system --ca {written} prints"
    ) in out
    assert "(--for system" not in out


def test_subprocess_prompt_from_pipe(gateway_process, tmp_path):
    """`python -m gateway trust` as a user runs it, with the reply y piped to the prompt."""
    authority = authority_of(gateway_process)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "trust", authority, "--for", "podman", "--out", str(tmp_path)],
        input="y\n", capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"Trust it for {authority}? [y/N] \n" in result.stdout
    assert files_under(tmp_path) == [f"etc/containers/certs.d/{authority}/ca.crt"]
    assert "podman/skopeo: would succeed" in result.stdout
