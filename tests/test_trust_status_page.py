"""The status page in headless Chromium, and the trust command it shows.

Chromium trusts the gateway's CA through an NSS database in its own HOME, so the
page must load over verified HTTPS; the paired case without that database must
end on Chromium's certificate error. The screenshot is kept in test-artifacts/.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from gateway import certs, lab
from tests import browser
from tests.certs_support import run_cli

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PRINTED_FINGERPRINT = re.compile(r"CA fingerprint \(SHA-256\): ([0-9A-F:]{95})")
PRINTED_COMMAND = re.compile(r"On each client, run: (registry-gateway trust .*)")
# The page's values, read the way a person reads them: the text of the table
# row named "CA SHA-256 fingerprint", and the command block.
EXPRESSIONS = {
    "fingerprint": "[...document.querySelectorAll('tr')]"
    ".filter(r => r.querySelector('th').textContent === 'CA SHA-256 fingerprint')"
    ".map(r => r.querySelector('td').textContent)[0] ?? null",
    "command": "document.getElementById('trust-command')?.textContent ?? null",
    "text": "document.body.innerText",
}


@pytest.fixture(scope="module", autouse=True)
def needs_chromium():
    reason = browser.unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def gateway(registry, tmp_path_factory):
    """`serve` on 127.0.0.1 named localhost, with a local CA of its own."""
    folder = tmp_path_factory.mktemp("status-page-certs")
    process = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--name", "localhost",
         "--certs-dir", str(folder)]
    ).start()
    process.ca_file = folder / certs.CA_CERT
    yield process
    process.stop()


@pytest.fixture
def chromium(tmp_path):
    started = []

    def start(ca_file: Path | None) -> browser.Chromium:
        instance = browser.Chromium(tmp_path / f"chromium-{len(started)}")
        if ca_file is not None:
            browser.trust_ca(instance.home, ca_file)
        started.append(instance.start())
        return instance

    yield start
    for instance in started:
        instance.stop()


def page_url(gateway) -> str:
    return f"https://localhost:{gateway.port}/_gateway/"


def test_status_page_trusted(gateway, chromium, tmp_path, capsys):
    """With the CA in Chromium's NSS database the page loads securely; its command works."""
    printed_fingerprint = PRINTED_FINGERPRINT.search(gateway.output).group(1)
    printed_command = PRINTED_COMMAND.search(gateway.output).group(1)

    loaded = chromium(gateway.ca_file).load(page_url(gateway), EXPRESSIONS)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "trust-status-page.png").write_bytes(loaded.screenshot)

    assert loaded.error == ""
    assert loaded.security_state == "secure"
    assert loaded.url == page_url(gateway)
    assert loaded.title == f"registry-gateway at localhost:{gateway.port}"
    assert loaded.screenshot.startswith(b"\x89PNG\r\n\x1a\n")
    assert "reachable: GET /v2/ answered 200" in loaded.values["text"]
    assert loaded.values["fingerprint"] == printed_fingerprint
    assert loaded.values["command"] == printed_command

    # Run the page's command as shown, installing under a test root instead of /.
    words = shlex.split(loaded.values["command"])
    root = tmp_path / "root"
    status, out, err = run_cli(capsys, *words[1:], "--root", str(root))
    authority = f"localhost:{gateway.port}"
    written = root / "etc/docker/certs.d" / authority / "ca.crt"
    layout = tmp_path / "image"
    lab.build_oci_layout(layout, layer_sizes=(600,), seed=90)
    pushed = lab.skopeo(
        "copy", "--dest-cert-dir", str(written.parent), f"oci:{layout}:v1",
        f"docker://{authority}/trust/page:v1",
    )

    assert words[:2] == ["registry-gateway", "trust"]
    assert status == 0, err
    assert "The fingerprint matches --fingerprint." in out
    assert written.read_bytes() == gateway.ca_file.read_bytes()
    assert pushed.returncode == 0, pushed.stderr


def test_status_page_untrusted(gateway, chromium):
    """Paired failure: a fresh profile without the CA ends on Chromium's certificate error."""
    loaded = chromium(None).load(page_url(gateway), EXPRESSIONS)
    assert loaded.error == "net::ERR_CERT_AUTHORITY_INVALID"
    assert loaded.security_state != "secure"
    assert loaded.values["command"] is None
