"""No secret reaches a log line: passwords, tokens, Authorization values, private keys."""

from __future__ import annotations

import base64
import shutil
import ssl
import urllib.request

import bcrypt
import pytest

from gateway import certs, lab
from gateway.errors import CertificateError
from tests.dockerd import TEST_NAME

USER, PASSWORD = "carol", "s3cret-Pa55word"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.secret-token-value.sig"


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    """A registry with its own htpasswd auth, on [::1] so dockerd can reach it by name too."""
    folder = tmp_path_factory.mktemp("auth-registry")
    htpasswd = folder / "htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
    registry = lab.RegistryProcess(host="::1", htpasswd=htpasswd, workdir=folder)
    registry.start()
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def debug_gateway(auth_registry, tmp_path_factory):
    certs_dir = tmp_path_factory.mktemp("secrets-certs")
    # One port on both loopback addresses: dockerd reaches ::1 as registry.test,
    # skopeo reaches 127.0.0.1 as localhost.
    port = next(p for p in (lab.free_port("::1") for _ in range(50)) if lab.port_is_free("127.0.0.1", p))
    process = lab.GatewayProcess(
        [
            "--listen", f"[::1]:{port}", "--listen", f"127.0.0.1:{port}", "--upstream", auth_registry.url, "--name", TEST_NAME,
            "--certs-dir", str(certs_dir), "--log-level", "debug",
        ]
    ).start()
    process.certs_dir = certs_dir
    yield process
    process.stop()


def secrets_in(text: str) -> list[str]:
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return [secret for secret in (PASSWORD, TOKEN, encoded) if secret in text]


def test_push_and_bearer_request_leak_nothing(debug_gateway, tmp_path):
    """A credentialed skopeo push and a Bearer request at debug level log no secret."""
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(debug_gateway.certs_dir / "ca.crt", trust / "ca.crt")
    image = tmp_path / "image"
    lab.build_oci_layout(image, layer_sizes=(1000, 3000), seed=71)
    address = f"localhost:{debug_gateway.port}"
    pushed = lab.skopeo(
        "copy", "--dest-cert-dir", str(trust), "--dest-creds", f"{USER}:{PASSWORD}",
        f"oci:{image}:v1", f"docker://{address}/secrets/app:v1",
    )
    assert pushed.returncode == 0, pushed.stderr

    context = ssl.create_default_context(cafile=str(trust / "ca.crt"))
    request = urllib.request.Request(
        f"https://[::1]:{debug_gateway.port}/v2/?access_token={TOKEN}",
        headers={"Authorization": f"Bearer {TOKEN}", "Host": address},
    )
    try:
        urllib.request.urlopen(request, context=context, timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    output = debug_gateway.read_output()
    assert "Forwarding" in output, "debug logging was not on"
    assert "Authorization: ***" in output
    assert secrets_in(output) == []


@pytest.mark.dockerd
def test_docker_login_leaks_nothing(dockerd, debug_gateway):
    """docker login with a password through the debug-logging gateway logs no secret."""
    host = f"{TEST_NAME}:{debug_gateway.port}"
    dockerd.trust(host, debug_gateway.certs_dir / "ca.crt")
    login = dockerd.docker("login", host, "-u", USER, "--password-stdin", input=PASSWORD + "\n")
    assert login.returncode == 0, login.stderr
    assert "Login Succeeded" in login.stdout
    assert secrets_in(debug_gateway.read_output()) == []
    assert secrets_in(dockerd.log_text()) == []


def test_key_errors_carry_no_key_material(tmp_path):
    """A broken key file's error names the file but never shows its content."""
    key = certs.generate_key()
    pem = certs.key_pem(key)
    broken = tmp_path / "broken.key"
    broken.write_bytes(pem[:60] + b"garbage" + pem[60:])
    with pytest.raises(CertificateError) as raised:
        certs.load_key(broken)
    message = str(raised.value)
    assert str(broken) in message
    assert pem[30:60].decode() not in message
    assert "garbage" not in message


def test_generated_keys_are_private(local_ca):
    assert oct((local_ca / certs.LEAF_KEY).stat().st_mode & 0o777) == "0o600"
    assert oct((local_ca / certs.CA_KEY).stat().st_mode & 0o777) == "0o400"
