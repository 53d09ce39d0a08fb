"""`certs check` on chains made with the openssl binary, as operators make them.

Each chain is root, intermediate and leaf. The cases are Name Constraints on the
intermediate, a SHA-1 signed leaf, a file with the intermediate first, an
Ed25519 leaf key, and the fixes offered for a leaf the local CA did not issue.
`serve` runs an Ed25519 pair in front of the real registry for skopeo and curl,
and probe must predict what skopeo prints for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import certcheck, lab, nameconstraints
from tests.certs_support import run_cli, skopeo_push, tls_registry, trust_dir


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def openssl_key(path: Path, kind: str = "ec") -> Path:
    if kind == "ed25519":
        openssl("genpkey", "-algorithm", "ed25519", "-out", str(path))
    else:
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)
    return path


def openssl_sign(folder: Path, name: str, key: Path, ca: str, extensions: str, digest: str = "sha256") -> Path:
    """Sign a certificate for `key` with subject CN=`name` by the CA stem `ca`."""
    csr, cert, ext = folder / f"{name}.csr", folder / f"{name}.crt", folder / f"{name}.ext"
    ext.write_text(extensions)
    openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr))
    openssl(
        "x509", "-req", f"-{digest}", "-in", str(csr), "-CA", str(folder / f"{ca}.crt"),
        "-CAkey", str(folder / f"{ca}.key"), "-CAcreateserial", "-days", "365",
        "-extfile", str(ext), "-out", str(cert),
    )
    return cert


CA_EXTENSIONS = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"


def openssl_chain(
    folder: Path, sans: str, constraints: str = "", digest: str = "sha256", key_kind: str = "ec"
) -> tuple[Path, Path, Path]:
    """Root, intermediate (with `constraints` as nameConstraints) and leaf; return root, chain, key."""
    folder.mkdir(parents=True, exist_ok=True)
    root_key = openssl_key(folder / "Root.key")
    openssl(
        "req", "-x509", "-key", str(root_key), "-subj", "/CN=Root", "-days", "365",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(folder / "Root.crt"),
    )
    inter_extensions = CA_EXTENSIONS + (f"nameConstraints=critical,{constraints}\n" if constraints else "")
    openssl_sign(folder, "Inter", openssl_key(folder / "Inter.key"), "Root", inter_extensions)
    leaf_key = openssl_key(folder / "leaf.key", key_kind)
    leaf = openssl_sign(
        folder, "leaf", leaf_key, "Inter", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n", digest
    )
    chain = folder / "chain.crt"
    chain.write_bytes(leaf.read_bytes() + (folder / "Inter.crt").read_bytes())
    return folder / "Root.crt", chain, leaf_key


def check(capsys, *args: str) -> tuple[int, str]:
    status, out, err = run_cli(capsys, "certs", "check", *args)
    assert err == ""
    return status, out


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oci")
    lab.build_oci_layout(folder, layer_sizes=(512,))
    return folder


def test_constraint_permitted_dns_violated(tmp_path, capsys):
    """A leaf for reg.local under an intermediate permitted only .corp.lan is an error."""
    root, chain, _ = openssl_chain(tmp_path, "DNS:reg.local", "permitted;DNS:.corp.lan")
    status, out = check(capsys, "--cert", str(chain), "--ca", str(root), "--name", "reg.local")
    go_message = (
        "x509: a root or intermediate certificate is not authorized to sign for this "
        'name: DNS name "reg.local" is not permitted by any constraint'
    )
    assert status == 1
    assert "No problems found" not in out
    assert "Error: The CA 'CN=Inter' has Name Constraints" in out
    assert f'"{go_message}"' in out
    assert "Found 1 error and 0 warnings" in out


def test_constraint_permitted_dns_met(tmp_path, capsys):
    """A leaf for reg.corp.lan and *.corp.lan is inside .corp.lan: no findings."""
    root, chain, _ = openssl_chain(tmp_path, "DNS:reg.corp.lan,DNS:*.corp.lan", "permitted;DNS:.corp.lan")
    status, out = check(capsys, "--cert", str(chain), "--ca", str(root), "--name", "reg.corp.lan")
    assert status == 0, out
    assert "No problems found" in out


def test_constraint_excluded_ip(tmp_path, capsys):
    """An IP SAN inside an excluded range gets Go's excluded-by-constraint text."""
    root, chain, _ = openssl_chain(
        tmp_path, "DNS:reg.corp.lan,IP:10.1.2.3", "permitted;DNS:.corp.lan,excluded;IP:10.0.0.0/255.0.0.0"
    )
    status, out = check(capsys, "--cert", str(chain), "--ca", str(root))
    assert status == 1
    assert 'IP address "10.1.2.3" is excluded by constraint "10.0.0.0/8"' in out


@pytest.mark.parametrize(
    ("name", "constraint", "expected"),
    [
        ("a.corp.lan", ".corp.lan", True),
        ("corp.lan", ".corp.lan", False),
        ("corp.lan", "corp.lan", True),
        ("a.b.corp.lan", "corp.lan", True),
        ("xcorp.lan", "corp.lan", False),
        ("*.corp.lan", ".corp.lan", True),
        ("REG.Corp.Lan", "corp.lan", True),
        ("anything", "", True),
    ],
)
def test_dns_constraint_matching(name, constraint, expected):
    assert nameconstraints._dns_matches(name, constraint) is expected


def test_constraint_message_matches_skopeo(tmp_path, capsys, layout):
    """The Go text the check quotes is what skopeo prints for a registry serving the chain."""
    root, chain, key = openssl_chain(tmp_path / "pki", "DNS:localhost", "permitted;DNS:.corp.lan")
    with tls_registry(chain, key, tmp_path / "registry") as registry:
        result = skopeo_push(layout, registry.address, trust_dir(tmp_path / "trust", root), host="localhost")
    status, out = check(capsys, "--cert", str(chain), "--ca", str(root), "--name", "localhost")
    go_message = lab.skopeo_error(result).rsplit('/v2/": ', 1)[1]
    assert result.returncode == 1
    assert go_message.startswith(nameconstraints.GO_NOT_AUTHORIZED)
    assert status == 1
    assert f'"{go_message}"' in out


def test_sha1_leaf_only_sha1_error(tmp_path, capsys):
    """A SHA-1 leaf of a valid chain gets the SHA-1 error and no chain error."""
    root, chain, _ = openssl_chain(tmp_path, "DNS:reg.local", digest="sha1")
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(tmp_path / "Inter.crt"), str(tmp_path / "leaf.crt")],
        capture_output=True, text=True, timeout=60,
    )
    status, out = check(capsys, "--cert", str(chain), "--ca", str(root), "--name", "reg.local")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert status == 1
    assert "is signed with SHA-1, which Go 1.18 and later reject" in out
    assert "Append the missing intermediate" not in out
    assert "ends at" not in out
    assert "Found 1 error and 0 warnings" in out


def test_leaf_second_one_error(tmp_path, capsys):
    """A file with the intermediate first and the leaf second gets one error with the fix."""
    root, chain, key = openssl_chain(tmp_path, "DNS:reg.local")
    reversed_chain = tmp_path / "reversed.crt"
    reversed_chain.write_bytes((tmp_path / "Inter.crt").read_bytes() + (tmp_path / "leaf.crt").read_bytes())
    status, out = check(
        capsys, "--cert", str(reversed_chain), "--key", str(key), "--ca", str(root), "--name", "reg.local"
    )
    assert status == 1
    assert out.count("Error:") == 1
    assert "Warning:" not in out
    assert f"Error: The file {str(reversed_chain)!r} starts with the CA 'CN=Inter'" in out
    assert "and the leaf 'CN=leaf' is certificate 2" in out
    assert "put the leaf certificate first" in out
    assert "Found 1 error and 0 warnings" in out


def test_ed25519_key_warning(tmp_path, capsys):
    """An Ed25519 leaf and key: a warning about other clients, and the summary line."""
    root, chain, key = openssl_chain(tmp_path, "DNS:reg.local", key_kind="ed25519")
    status, out = check(capsys, "--cert", str(chain), "--key", str(key), "--ca", str(root), "--name", "reg.local")
    assert status == 0
    assert "neither ECDSA nor RSA" not in out
    assert "Error:" not in out
    assert "Warning: The certificate has an Ed25519 key. Go's crypto/tls" in out
    assert "some clients and older TLS stacks do not" in out
    assert out.rstrip().splitlines()[-1] == f"Found 0 errors and 1 warning in {str(chain)!r}."


def test_foreign_leaf_fix_two_options(tmp_path, capsys):
    """A leaf from another CA: reissue from that CA with the SANs, or switch to the local CA."""
    root, chain, _ = openssl_chain(tmp_path / "pki", "DNS:reg.local", digest="sha1")
    folder = tmp_path / "certs"
    status, out = check(capsys, "--dir", str(folder), "--cert", str(chain), "--ca", str(root), "--name", "reg.local")
    assert status == 1
    assert "either reissue it from the CA that issued it, 'CN=Inter', with the SANs reg.local" in out
    assert f"or switch to the gateway's local CA in {str(folder)!r}" in out
    assert f"with: registry-gateway certs issue --dir {folder} reg.local --force" in out


def test_local_leaf_fix_is_command(tmp_path, capsys):
    """A leaf the local CA issued keeps the plain certs issue command as its fix."""
    folder = tmp_path / "certs"
    run_cli(capsys, "certs", "init", "--dir", str(folder))
    run_cli(capsys, "certs", "issue", "--dir", str(folder), "localhost")
    status, out = check(capsys, "--dir", str(folder), "--name", "127.0.0.1")
    assert status == 1
    assert f"Issue one that covers it: registry-gateway certs issue --dir {folder} localhost 127.0.0.1 --force" in out
    assert "either reissue it" not in out


def ed25519_root_and_leaf(
    folder: Path, key_kind: str = "ed25519", sans: str = "DNS:localhost,IP:127.0.0.1,IP:::1"
) -> tuple[Path, Path, Path]:
    """An Ed25519 root and a leaf for `sans` signed directly by it; return root, leaf, key."""
    folder.mkdir(parents=True, exist_ok=True)
    root_key = openssl_key(folder / "Root.key", "ed25519")
    openssl(
        "req", "-x509", "-key", str(root_key), "-subj", "/CN=Ed25519 Root", "-days", "365",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(folder / "Root.crt"),
    )
    leaf_key = folder / "leaf.key"
    openssl("genpkey", "-algorithm", key_kind, "-out", str(leaf_key))
    leaf_key.chmod(0o600)
    extensions = f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n"
    leaf = openssl_sign(folder, "leaf", leaf_key, "Root", extensions)
    return folder / "Root.crt", leaf, leaf_key


def curl_tags(port: int, ca: Path, *tls_options: str) -> subprocess.CompletedProcess:
    url = f"https://localhost:{port}/v2/certs/test/tags/list"
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--verbose", "--cacert", str(ca), *tls_options, url],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def test_serve_ed25519_real_clients(tmp_path, capsys, registry, layout):
    """serve accepts an Ed25519 pair; skopeo pushes and curl reads over TLS 1.2 and 1.3."""
    root, leaf, key = ed25519_root_and_leaf(tmp_path / "pki")
    cert_dir = trust_dir(tmp_path / "trust", root)
    gateway = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--name", "localhost",
         "--cert", str(leaf), "--key", str(key), "--certs-dir", str(tmp_path / "certs")]
    ).start()
    try:
        pushed = skopeo_push(layout, gateway.addresses[0], cert_dir, host="localhost")
        inspected = lab.skopeo(
            "inspect", "--cert-dir", str(cert_dir), f"docker://localhost:{gateway.port}/certs/test:v1",
            timeout=60,
        )
        untrusted = lab.skopeo("inspect", f"docker://localhost:{gateway.port}/certs/test:v1", timeout=60)
        curl_12 = curl_tags(gateway.port, root, "--tlsv1.2", "--tls-max", "1.2")
        curl_13 = curl_tags(gateway.port, root, "--tlsv1.3")
    finally:
        gateway.stop()
    status, out = check(capsys, "--cert", str(leaf), "--key", str(key), "--ca", str(root),
                        "--name", "localhost", "--dir", str(tmp_path / "certs"))
    check_warning = next(line for line in out.splitlines() if "Ed25519" in line)

    assert pushed.returncode == 0, pushed.stderr
    assert inspected.returncode == 0, inspected.stderr
    assert '"RepoTags": [\n        "v1"\n    ]' in inspected.stdout
    assert untrusted.returncode == 1
    assert lab.skopeo_error(untrusted).endswith(certcheck.GO_UNKNOWN_AUTHORITY)
    assert curl_12.returncode == 0, curl_12.stderr
    assert "SSL connection using TLSv1.2 / ECDHE-ECDSA-" in curl_12.stderr
    assert json.loads(curl_12.stdout) == {"name": "certs/test", "tags": ["v1"]}
    assert curl_13.returncode == 0, curl_13.stderr
    assert "SSL connection using TLSv1.3 / " in curl_13.stderr
    assert status == 0
    assert check_warning.startswith("Warning: The certificate has an Ed25519 key.")
    assert "Error:" not in out
    serve_warning = check_warning.replace(
        "Warning: The certificate", f"WARNING gateway.server: The certificate {leaf}", 1
    )
    assert serve_warning in gateway.output
    assert "Chromium gets no TLS connection (net::ERR_CONNECTION_CLOSED)" in gateway.output
    assert "without its issuer 'CN=Ed25519 Root'" in gateway.output
    assert "A leaf issued directly by a root CA needs nothing more." in gateway.output


def test_serve_ed448_rejected(tmp_path, capsys):
    """serve and certs check both reject an Ed448 key with the same message."""
    root, leaf, key = ed25519_root_and_leaf(tmp_path / "pki", key_kind="ed448")
    # A subprocess with a timeout, so that a serve that wrongly starts cannot hang the suite.
    served = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--listen", "127.0.0.1:0",
         "--upstream", "http://127.0.0.1:9", "--cert", str(leaf), "--key", str(key)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    check_status, check_out = check(capsys, "--cert", str(leaf), "--key", str(key), "--ca", str(root))
    message = (
        f"The key in {str(key)!r} is Ed448, which Go's crypto/tls (docker, containerd, "
        "podman, skopeo) does not support: use an ECDSA P-256 key."
    )
    assert served.returncode == 1
    assert served.stdout == ""
    assert served.stderr == f"Error: {message}\n"
    assert check_status == 1
    assert f"Error: {message}" in check_out


def test_probe_ed25519_same_name_ca(tmp_path, capsys, registry):
    """probe predicts skopeo's text for a trusted Ed25519 CA of the issuer's name but another key."""
    root, leaf, key = ed25519_root_and_leaf(tmp_path / "pki")
    other = tmp_path / "other"
    other.mkdir()
    other_key = openssl_key(other / "Root.key", "ed25519")
    openssl(
        "req", "-x509", "-key", str(other_key), "-subj", "/CN=Ed25519 Root", "-days", "365",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(other / "Root.crt"),
    )
    gateway = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--name", "localhost",
         "--cert", str(leaf), "--key", str(key), "--certs-dir", str(tmp_path / "certs")]
    ).start()
    try:
        cert_dir = trust_dir(tmp_path / "trust", other / "Root.crt")
        image = f"docker://localhost:{gateway.port}/a/b:v1"
        result = lab.skopeo("inspect", "--cert-dir", str(cert_dir), image, timeout=60)
        status, out, _ = run_cli(
            capsys, "probe", f"localhost:{gateway.port}", "--ca", str(other / "Root.crt"), "--json"
        )
    finally:
        gateway.stop()
    go_message = lab.skopeo_error(result).rsplit('/v2/": ', 1)[1]
    assert result.returncode == 1
    assert '"x509: Ed25519 verification failure"' in go_message
    assert status == 1
    assert json.loads(out)["go_error"] == go_message
