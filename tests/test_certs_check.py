"""`certs check` on each certificate defect users bring, with skopeo as the referee.

Where a Go client has a message for the defect, the check must quote the message
skopeo (Go's crypto/x509) prints, word for word.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway import certcheck, certs, lab
from tests.certs_support import (
    cn_only_leaf,
    intermediate_ca,
    issue,
    new_ca,
    root_ca,
    run_cli,
    skopeo_push,
    tls_registry,
    trust_dir,
    write_pair,
)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oci")
    lab.build_oci_layout(folder, layer_sizes=(512,))
    return folder


@pytest.fixture
def ca(tmp_path):
    folder = tmp_path / "certs"
    ca_cert, ca_key = new_ca(folder)
    return folder, ca_cert, ca_key


def check(capsys, *args: str) -> tuple[int, str]:
    status, out, err = run_cli(capsys, "certs", "check", *args)
    assert err == ""
    return status, out


def test_check_clean(ca, capsys):
    """The gateway's own fresh leaf, checked for the names it covers, has no findings."""
    folder, _, _ = ca
    run_cli(capsys, "certs", "issue", "--dir", str(folder), "localhost", "127.0.0.1")
    status, out = check(capsys, "--dir", str(folder), "--name", "localhost:5443", "--name", "127.0.0.1")
    assert status == 0
    assert "No problems found" in out
    assert "Error:" not in out


def test_check_cn_only(tmp_path, capsys):
    """A CN-only certificate is flagged with Go's legacy Common Name error and the issue command."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    leaf, key = cn_only_leaf(ca_cert, ca_key, "registry.example")
    cert_path, key_path = write_pair(tmp_path, "leaf", [leaf], key)
    status, out = check(
        capsys, "--cert", str(cert_path), "--key", str(key_path),
        "--ca", str(tmp_path / "certs" / "ca.crt"), "--name", "registry.example:5000",
    )
    assert status == 1
    assert f'"{certcheck.GO_CN_ONLY}"' in out
    assert "registry-gateway certs issue registry.example --force" in out
    assert out.count("Error:") == 1


def test_check_cn_with_port(tmp_path, capsys):
    """A CN of `IP:PORT` and no SAN: the IP is reported with Go's missing-IP-SAN error."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    leaf, key = cn_only_leaf(ca_cert, ca_key, "192.0.2.10:5000")
    cert_path, _ = write_pair(tmp_path, "leaf", [leaf], key)
    status, out = check(
        capsys, "--cert", str(cert_path), "--ca", str(tmp_path / "certs" / "ca.crt"),
        "--name", "192.0.2.10:5000",
    )
    assert status == 1
    assert (
        '"x509: cannot validate certificate for 192.0.2.10 because it doesn\'t contain '
        'any IP SANs"' in out
    )
    assert "registry-gateway certs issue 192.0.2.10 --force" in out


def test_check_ip_san_missing(tmp_path, capsys):
    """A DNS-only leaf dialled by IP: add the IP SAN, or connect by the DNS name."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    leaf, key = issue(ca_cert, ca_key, ["registry.example"])
    cert_path, _ = write_pair(tmp_path, "leaf", [leaf], key)
    status, out = check(
        capsys, "--cert", str(cert_path), "--ca", str(tmp_path / "certs" / "ca.crt"),
        "--name", "192.0.2.10:5000",
    )
    assert status == 1
    assert "registry-gateway certs issue registry.example 192.0.2.10 --force" in out
    assert "Note: Instead of adding 192.0.2.10, clients may connect by a DNS name" in out


@pytest.mark.parametrize(
    "case, host",
    [("cn-only", "127.0.0.1"), ("wrong-san", "127.0.0.1"), ("wrong-san", "localhost"),
     ("ip-only", "localhost")],
)
def test_check_quotes_skopeo(tmp_path, capsys, layout, case, host):
    """The message the check quotes is the one skopeo prints for the same certificate."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    if case == "cn-only":
        leaf, key = cn_only_leaf(ca_cert, ca_key, host)
    elif case == "wrong-san":
        leaf, key = issue(ca_cert, ca_key, ["wrong-name.invalid", "other.invalid"])
    else:
        leaf, key = issue(ca_cert, ca_key, ["127.0.0.1"])
    cert_path, key_path = write_pair(tmp_path, "leaf", [leaf], key)
    cert_dir = trust_dir(tmp_path / "trust", tmp_path / "certs" / "ca.crt")
    with tls_registry(cert_path, key_path, tmp_path / "reg") as registry:
        result = skopeo_push(layout, registry.address, cert_dir, host=host)
    go_message = lab.skopeo_error(result).rsplit("/v2/\": ", 1)[1]

    status, out = check(
        capsys, "--cert", str(cert_path), "--ca", str(tmp_path / "certs" / "ca.crt"), "--name", host
    )
    assert result.returncode == 1
    assert go_message == certcheck.go_hostname_error(leaf, host)
    assert status == 1
    assert f'"{go_message}"' in out


def build_chain(tmp_path):
    """Root R, intermediate I, and leaf L for localhost signed by I."""
    (tmp_path / "certs").mkdir()
    root_cert, root_key = root_ca(tmp_path / "certs")
    inter_cert, inter_key = intermediate_ca(root_cert, root_key)
    leaf, key = issue(inter_cert, inter_key, ["localhost", "127.0.0.1"])
    leaf_only = write_pair(tmp_path, "leaf-only", [leaf], key)
    full = write_pair(tmp_path, "full", [leaf, inter_cert], key)
    return leaf_only, full, tmp_path / "certs" / "ca.crt"


def test_check_missing_intermediate(tmp_path, capsys):
    """A leaf without its intermediate: name the missing issuer and the append command."""
    (cert_path, key_path), _, root = build_chain(tmp_path)
    status, out = check(capsys, "--cert", str(cert_path), "--key", str(key_path), "--ca", str(root))
    assert status == 1
    assert "without its issuer 'CN=test intermediate CA'" in out
    assert f"append the intermediate to the certificate file: cat intermediate.crt >> {cert_path}" in out
    assert "If it is a root CA, check against it with --ca FILE" in out
    assert f'"{certcheck.GO_UNKNOWN_AUTHORITY}"' in out


def test_check_own_leaf_given_as_cert(ca, capsys):
    """--cert naming --dir's own leaf is checked against --dir's CA, as without --cert."""
    folder, _, _ = ca
    run_cli(capsys, "certs", "issue", "--dir", str(folder), "localhost")
    status, out = check(
        capsys, "--dir", str(folder), "--cert", str(folder / "gateway.crt"), "--name", "localhost"
    )
    assert status == 0, out
    assert "No problems found" in out


def test_check_leaf_of_unknown_root(ca, tmp_path, capsys):
    """A leaf from a CA not in the system store: the fix names both --ca and the append."""
    folder, _, _ = ca
    run_cli(capsys, "certs", "issue", "--dir", str(folder), "localhost")
    copy = tmp_path / "copy.crt"
    copy.write_bytes((folder / "gateway.crt").read_bytes())
    status, out = check(capsys, "--dir", str(folder), "--cert", str(copy))
    assert status == 1
    assert "without its issuer" in out
    assert "which is not in the system store" in out
    assert "--ca FILE" in out


def test_check_full_chain(tmp_path, capsys):
    """The same leaf followed by its intermediate has no findings."""
    _, (cert_path, key_path), root = build_chain(tmp_path)
    status, out = check(
        capsys, "--cert", str(cert_path), "--key", str(key_path), "--ca", str(root), "--name", "localhost"
    )
    assert status == 0, out


def test_gateway_serves_full_chain(tmp_path, registry, layout):
    """skopeo rejects a gateway serving L alone and accepts one serving L+I, trusting only R."""
    (leaf_cert, leaf_key), (full_cert, full_key), root = build_chain(tmp_path)
    cert_dir = trust_dir(tmp_path / "trust", root)
    results = {}
    for label, cert_path, key_path in (("leaf", leaf_cert, leaf_key), ("full", full_cert, full_key)):
        gateway = lab.GatewayProcess(
            ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--name", "localhost",
             "--cert", str(cert_path), "--key", str(key_path)]
        ).start()
        try:
            results[label] = skopeo_push(layout, gateway.addresses[0], cert_dir, host="localhost")
        finally:
            gateway.stop()
        results[label + "-log"] = gateway.output
    assert results["leaf"].returncode == 1
    assert lab.skopeo_error(results["leaf"]).endswith(certcheck.GO_UNKNOWN_AUTHORITY)
    assert "without its issuer 'CN=test intermediate CA'" in results["leaf-log"]
    assert results["full"].returncode == 0, results["full"].stderr
    assert "without its issuer" not in results["full-log"]


def test_check_path_length(tmp_path, capsys, layout):
    """The local CA signs no intermediates: the check and skopeo both reject one below it."""
    root_cert, root_key = new_ca(tmp_path / "certs")
    inter_cert, inter_key = intermediate_ca(root_cert, root_key)
    leaf, key = issue(inter_cert, inter_key, ["localhost"])
    cert_path, key_path = write_pair(tmp_path, "full", [leaf, inter_cert], key)
    root = tmp_path / "certs" / "ca.crt"
    status, out = check(capsys, "--cert", str(cert_path), "--ca", str(root))
    with tls_registry(cert_path, key_path, tmp_path / "reg") as registry:
        result = skopeo_push(layout, registry.address, trust_dir(tmp_path / "trust", root), host="localhost")
    assert status == 1
    assert f'"{certcheck.GO_PATH_LENGTH}"' in out
    assert lab.skopeo_error(result).endswith(certcheck.GO_PATH_LENGTH)


def test_check_key_mismatch(tmp_path, capsys):
    """A key from another pair is reported, naming both files."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    leaf, key = issue(ca_cert, ca_key, ["localhost"])
    other, other_key = issue(ca_cert, ca_key, ["localhost"])
    cert_path, _ = write_pair(tmp_path, "leaf", [leaf], key)
    _, other_key_path = write_pair(tmp_path, "other", [other], other_key)
    status, out = check(
        capsys, "--cert", str(cert_path), "--key", str(other_key_path),
        "--ca", str(tmp_path / "certs" / "ca.crt"),
    )
    assert status == 1
    assert f"The key '{other_key_path}' does not match the certificate '{cert_path}'" in out


def test_check_key_mode(ca, capsys):
    """A key readable by others gets a warning with the chmod command."""
    folder, _, _ = ca
    run_cli(capsys, "certs", "issue", "--dir", str(folder), "localhost")
    os.chmod(folder / "gateway.key", 0o644)
    status, out = check(capsys, "--dir", str(folder))
    assert status == 0
    assert f"Warning: The key '{folder / 'gateway.key'}' is readable by other users (mode 0644)" in out
    assert f"chmod 600 {folder / 'gateway.key'}" in out


def test_check_expired(tmp_path, capsys):
    """An expired leaf is reported with Go's message shape and the reissue command."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    start = certs.now() - datetime.timedelta(days=10)
    leaf, key = issue(ca_cert, ca_key, ["localhost"], days=1, not_before=start)
    cert_path, _ = write_pair(tmp_path, "leaf", [leaf], key)
    status, out = check(capsys, "--cert", str(cert_path), "--ca", str(tmp_path / "certs" / "ca.crt"))
    end = leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status == 1
    assert "x509: certificate has expired or is not yet valid: current time " in out
    assert f" is after {end}\"" in out
    assert "registry-gateway certs issue localhost --force" in out


def test_check_not_yet_valid(tmp_path, capsys):
    """A leaf that starts tomorrow is reported with this host's clock reading."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    start = certs.now() + datetime.timedelta(days=1)
    leaf, key = issue(ca_cert, ca_key, ["localhost"], not_before=start)
    cert_path, _ = write_pair(tmp_path, "leaf", [leaf], key)
    status, out = check(capsys, "--cert", str(cert_path), "--ca", str(tmp_path / "certs" / "ca.crt"))
    assert status == 1
    assert "and this host's clock reads" in out
    assert " is before " in out
    assert "Check the clock on the server and the clients" in out


def test_check_expiring_soon(tmp_path, capsys):
    """A leaf with 10 days left gets a warning, which alone still exits 0."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    leaf, key = issue(ca_cert, ca_key, ["localhost"], days=10)
    cert_path, _ = write_pair(tmp_path, "leaf", [leaf], key)
    status, out = check(capsys, "--cert", str(cert_path), "--ca", str(tmp_path / "certs" / "ca.crt"))
    assert status == 0
    assert "Warning: The certificate expires in 9 days" in out


def test_check_client_eku(tmp_path, capsys):
    """A client-only certificate served as a server: Go's incompatible key usage error."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    leaf, key = issue(ca_cert, ca_key, ["localhost"], client=True)
    cert_path, _ = write_pair(tmp_path, "leaf", [leaf], key)
    status, out = check(capsys, "--cert", str(cert_path), "--ca", str(tmp_path / "certs" / "ca.crt"))
    assert status == 1
    assert f'"{certcheck.GO_KEY_USAGE}"' in out


def test_check_small_rsa(tmp_path, capsys):
    """A 1024-bit RSA leaf is reported."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    leaf = certs.issue_leaf(ca_cert, ca_key, key, ["localhost"])
    cert_path, _ = write_pair(tmp_path, "leaf", [leaf], key)
    status, out = check(capsys, "--cert", str(cert_path), "--ca", str(tmp_path / "certs" / "ca.crt"))
    assert status == 1
    assert "has a 1024-bit RSA key; use at least 2048 bits" in out


def test_check_sha1(tmp_path, capsys, layout):
    """A SHA-1 signed leaf (made by openssl) is reported, and skopeo rejects it too."""
    new_ca(tmp_path / "certs")
    ca_key = tmp_path / "ca-copy.key"
    ca_key.write_bytes((tmp_path / "certs" / "ca.key").read_bytes())
    key_path, csr, cert_path = tmp_path / "s.key", tmp_path / "s.csr", tmp_path / "s.crt"
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost\n")
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", str(key_path), "-out", str(csr)],
        check=True, capture_output=True, timeout=60,
    )
    subprocess.run(
        ["openssl", "x509", "-req", "-sha1", "-in", str(csr), "-CA", str(tmp_path / "certs" / "ca.crt"),
         "-CAkey", str(ca_key), "-CAcreateserial", "-days", "30", "-extfile", str(ext),
         "-out", str(cert_path)],
        check=True, capture_output=True, timeout=60,
    )
    status, out = check(capsys, "--cert", str(cert_path), "--ca", str(tmp_path / "certs" / "ca.crt"))
    cert_dir = trust_dir(tmp_path / "trust", tmp_path / "certs" / "ca.crt")
    with tls_registry(cert_path, key_path, tmp_path / "reg") as registry:
        result = skopeo_push(layout, registry.address, cert_dir, host="localhost")
    assert status == 1
    assert "is signed with SHA-1, which Go 1.18 and later reject" in out
    assert result.returncode == 1
    assert "insecure algorithm" in lab.skopeo_error(result)


def test_check_self_signed_untrusted(tmp_path, capsys):
    """A self-signed leaf checked against the system store is reported as unknown authority."""
    new_ca(tmp_path / "certs")
    status, out = check(capsys, "--cert", str(tmp_path / "certs" / "ca.crt"))
    assert status == 1
    assert "is a CA certificate, not a server leaf" in out
    assert "is self-signed and not in the system store" in out


def test_check_missing_cert(tmp_path, capsys):
    """With no certificate in --dir, the error names the file and the issue command."""
    status, _, err = run_cli(capsys, "certs", "check", "--dir", str(tmp_path))
    assert status == 1
    assert f"'{tmp_path / 'gateway.crt'}' was not found" in err
    assert f"registry-gateway certs issue --dir {tmp_path} NAME" in err


def test_check_subprocess(ca, capsys):
    """`python -m gateway certs check` exits 1 with findings on stdout and nothing on stderr."""
    folder, _, _ = ca
    run_cli(capsys, "certs", "issue", "--dir", str(folder), "localhost")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "certs", "check", "--dir", str(folder), "--name", "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == ""
    assert "doesn't contain any IP SANs" in result.stdout


def test_serve_warns_cn_only(tmp_path, registry):
    """serve with a CN-only certificate warns loudly with Go's error and the issue command."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    leaf, key = cn_only_leaf(ca_cert, ca_key, "registry.example")
    cert_path, key_path = write_pair(tmp_path, "leaf", [leaf], key)
    gateway = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--name", "registry.example",
         "--cert", str(cert_path), "--key", str(key_path)]
    ).start()
    gateway.stop()
    assert "WARNING" in gateway.output
    assert certcheck.GO_CN_ONLY in gateway.output
    assert "registry-gateway certs issue registry.example" in gateway.output


def openssl_self_signed(tmp_path, *san: str):
    """A self-signed P-256 certificate made by `openssl req -x509`, which adds CA:TRUE."""
    cert_path, key_path = tmp_path / "ss.crt", tmp_path / "ss.key"
    command = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-subj", "/CN=localhost", "-days", "90",
        "-keyout", str(key_path), "-out", str(cert_path),
    ]
    if san:
        command += ["-addext", "subjectAltName=" + ",".join(san)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    key_path.chmod(0o600)
    return cert_path, key_path


def test_check_openssl_self_signed(tmp_path, capsys, layout):
    """A self-signed server certificate is a warning, not a CA error, and skopeo accepts it."""
    cert_path, key_path = openssl_self_signed(tmp_path, "DNS:localhost", "IP:127.0.0.1")
    assert certs.is_ca(certs.load_certs(cert_path)[0])
    with tls_registry(cert_path, key_path, tmp_path / "reg") as registry:
        result = skopeo_push(layout, registry.address, trust_dir(tmp_path / "trust", cert_path), host="localhost")
    status, out = check(
        capsys, "--cert", str(cert_path), "--key", str(key_path), "--ca", str(cert_path),
        "--name", "localhost", "--name", "127.0.0.1",
    )
    assert result.returncode == 0, result.stderr
    assert "is a CA certificate" not in out
    assert "Error:" not in out
    assert f"Warning: The certificate {str(cert_path)!r} is self-signed" in out
    assert f"install {str(cert_path)!r} as the client's ca.crt" in out
    assert "Every renewal makes a new certificate and breaks that trust" in out
    assert "registry-gateway certs init" in out
    assert "registry-gateway certs issue NAME ..." in out
    assert f"Found 0 errors and 1 warning in {str(cert_path)!r}." in out
    assert status == 0


def test_check_self_signed_other_checks(tmp_path, capsys):
    """The self-signed certificate still gets the name and key checks."""
    cert_path, _ = openssl_self_signed(tmp_path, "DNS:localhost")
    (tmp_path / "other").mkdir()
    _, other_key = openssl_self_signed(tmp_path / "other")
    status, out = check(
        capsys, "--cert", str(cert_path), "--key", str(other_key), "--ca", str(cert_path),
        "--name", "127.0.0.1",
    )
    assert status == 1
    assert "is self-signed, so each client must trust" in out
    assert "does not match the certificate" in out
    assert "does not cover '127.0.0.1'" in out


def test_check_self_signed_cn_only(tmp_path, capsys):
    """An openssl certificate with only CN=localhost gets the CN error, not the CA error."""
    cert_path, _ = openssl_self_signed(tmp_path)
    status, out = check(capsys, "--cert", str(cert_path), "--ca", str(cert_path))
    assert status == 1
    assert "is a CA certificate" not in out
    assert f'"{certcheck.GO_CN_ONLY}"' in out


def test_check_after_init_force(tmp_path, capsys):
    """A leaf of the replaced CA is blamed on the replacement, not on an intermediate."""
    folder = tmp_path / "certs"
    new_ca(folder)
    run_cli(capsys, "certs", "issue", "--dir", str(folder), "localhost")
    run_cli(capsys, "certs", "init", "--dir", str(folder), "--force")
    status, out = check(capsys, "--dir", str(folder))
    assert status == 1
    assert "intermediate" not in out
    assert "the CA was replaced (for example by `registry-gateway certs init --force`)" in out
    assert f"Issue a new leaf from the current CA: registry-gateway certs issue --dir {folder} localhost --force" in out


def test_check_same_name_other_ca(tmp_path, capsys, layout):
    """A leaf whose issuer has the CA's name but another key: a different CA of that name."""
    folder = tmp_path / "certs"
    ca_cert, _ = new_ca(folder)
    impostor_key = certs.generate_key()
    common_name = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    impostor = certs.create_ca(impostor_key, common_name)
    assert impostor.subject == ca_cert.subject
    leaf, key = issue(impostor, impostor_key, ["localhost"])
    cert_path, key_path = write_pair(tmp_path, "leaf", [leaf], key)
    with tls_registry(cert_path, key_path, tmp_path / "reg") as registry:
        result = skopeo_push(layout, registry.address, trust_dir(tmp_path / "trust", folder / "ca.crt"), host="localhost")
    status, out = check(capsys, "--dir", str(folder), "--cert", str(cert_path), "--ca", str(folder / "ca.crt"))
    assert status == 1
    assert "intermediate" not in out
    assert "A different CA with the same name did" in out
    assert "registry-gateway certs init --force" in out
    assert f"registry-gateway certs issue --dir {folder} localhost --force" in out
    assert result.returncode == 1
    go_message = lab.skopeo_error(result).rsplit("/v2/\": ", 1)[1]
    assert go_message == certcheck.go_same_name_error(ca_cert)
    assert f'"{go_message}"' in out


def test_check_counts_errors_warnings(tmp_path, capsys):
    """The summary line counts errors and warnings apart."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    leaf, key = issue(ca_cert, ca_key, ["localhost"], days=10)
    cert_path, _ = write_pair(tmp_path, "leaf", [leaf], key)
    status, out = check(
        capsys, "--cert", str(cert_path), "--ca", str(tmp_path / "certs" / "ca.crt"),
        "--name", "127.0.0.1",
    )
    assert status == 1
    assert f"Found 1 error and 1 warning in {str(cert_path)!r}." in out


def exit_status_cases(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Certificates with no finding, only a warning, only an error, and both."""
    ca_cert, ca_key = new_ca(tmp_path / "certs")
    leaves = {
        "clean": issue(ca_cert, ca_key, ["localhost"]),
        "warning": issue(ca_cert, ca_key, ["localhost"], days=10),
        "error": issue(ca_cert, ca_key, ["localhost"], client=True),
        "both": issue(ca_cert, ca_key, ["localhost"], days=10, client=True),
    }
    return {
        label: write_pair(tmp_path, label, [leaf], key) for label, (leaf, key) in leaves.items()
    }


@pytest.mark.parametrize(
    ("case", "strict", "expected"),
    [
        ("clean", False, 0),
        ("clean", True, 0),
        ("warning", False, 0),
        ("warning", True, 3),
        ("error", False, 1),
        ("error", True, 1),
        ("both", False, 1),
        ("both", True, 1),
    ],
)
def test_check_exit_status(tmp_path, capsys, case, strict, expected):
    """0 without errors, 1 with any error, 3 for warnings alone under --strict."""
    cert_path, key_path = exit_status_cases(tmp_path)[case]
    ca_path = tmp_path / "certs" / "ca.crt"
    args = ["--cert", str(cert_path), "--key", str(key_path), "--ca", str(ca_path)]
    status, out = check(capsys, *args, *(["--strict"] if strict else []))
    assert status == expected, out


def test_check_usage_error_status(capsys):
    """An unknown option exits 2 with argparse's usage message on stderr."""
    with pytest.raises(SystemExit) as exited:
        run_cli(capsys, "certs", "check", "--stirct")
    captured = capsys.readouterr()
    assert exited.value.code == 2
    assert captured.out == ""
    assert "unrecognized arguments: --stirct" in captured.err


def test_check_help_documents_status(capsys):
    """`certs check --help` states every exit status and the --strict option."""
    with pytest.raises(SystemExit):
        run_cli(capsys, "certs", "check", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0 when there are no errors, even with warnings" in text
    assert "1 when there is an error, meaning a client will reject the certificate" in text
    assert "2 for a usage error" in text
    assert "3 with --strict when there are warnings but no errors" in text
    assert "--strict exit 3 when there are warnings but no errors (default: exit 0)" in text


def test_check_subprocess_strict(ca, capsys):
    """`python -m gateway certs check --strict` exits 3 for a world-readable key alone."""
    folder, _, _ = ca
    run_cli(capsys, "certs", "issue", "--dir", str(folder), "localhost")
    os.chmod(folder / "gateway.key", 0o644)
    command = [sys.executable, "-m", "gateway", "certs", "check", "--dir", str(folder)]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=60)
    strict = subprocess.run([*command, "--strict"], capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0
    assert strict.returncode == 3
    assert strict.stderr == ""
    assert "Found 0 errors and 1 warning" in strict.stdout
