"""`registry-gateway trust --install` makes a real dockerd trust the gateway.

dockerd verifies TLS only for registries it does not treat as insecure, so the
gateway listens on [::1] and is reached as `registry.test` (mapped to ::1 in
dockerd's private /etc/hosts). The trust command runs inside dockerd's mount
namespace, where that name resolves and /etc/docker is the fixture's folder,
just as an operator runs it on the client machine.
"""

from __future__ import annotations

import re
import shlex
import sys

import pytest

from gateway import lab
from tests.dockerd import TEST_NAME, last_line

pytestmark = pytest.mark.dockerd

PRINTED_COMMAND = re.compile(r"On each client, run: (registry-gateway trust \S+ .*)")


@pytest.fixture(scope="module")
def v6_registry(tmp_path_factory):
    """A plain-HTTP registry on [::1] behind this module's gateway."""
    process = lab.RegistryProcess(host="::1")
    process.workdir = tmp_path_factory.mktemp("trust-registry-v6")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trust-dockerd-image")
    lab.build_oci_layout(folder, layer_sizes=(900, 120_000), seed=88)
    return folder


@pytest.fixture
def gateway(v6_registry, tmp_path):
    """`serve` on [::1] with its own local CA, named registry.test."""
    process = lab.GatewayProcess(
        ["--listen", "[::1]:0", "--upstream", v6_registry.url, "--name", TEST_NAME,
         "--certs-dir", str(tmp_path / "certs")]
    ).start()
    yield process
    process.stop()


def printed_command(gateway) -> list[str]:
    """The trust command serve printed, as arguments for `python -m gateway`."""
    match = PRINTED_COMMAND.search(gateway.output)
    assert match, gateway.output
    words = shlex.split(match.group(1))
    assert words[:2] == ["registry-gateway", "trust"]
    return [sys.executable, "-m", "gateway", *words[1:]]


def test_printed_command_installs_trust(dockerd, gateway, layout):
    """Push by name fails with unknown authority; after the printed trust command it succeeds."""
    authority = f"{TEST_NAME}:{gateway.port}"
    reference = f"{authority}/trust/dockerd:v1"
    dockerd.load_image(layout, reference)
    folder = dockerd.etc_docker / "certs.d" / authority

    before = dockerd.docker("push", reference)
    command = printed_command(gateway)
    installed = dockerd.run_in_namespace(*command)
    after = dockerd.docker("push", reference)

    assert command[4] == authority
    assert before.returncode == 1
    assert last_line(before) == (
        f'Get "https://{authority}/v2/": x509: certificate signed by unknown authority'
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "The fingerprint matches --fingerprint." in installed.stdout
    assert f"Wrote '/etc/docker/certs.d/{authority}/ca.crt'" in installed.stdout
    assert "  docker: would succeed" in installed.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["ca.crt"]
    assert after.returncode == 0, after.stderr


def test_wrong_fingerprint_installs_nothing(dockerd, gateway, layout):
    """With one digit of the fingerprint changed, nothing is written and the push still fails."""
    authority = f"{TEST_NAME}:{gateway.port}"
    reference = f"{authority}/trust/wrong:v1"
    command = printed_command(gateway)
    position = command.index("--fingerprint") + 1
    right = command[position]
    command[position] = ("1" if right[0] == "0" else "0") + right[1:]

    installed = dockerd.run_in_namespace(*command)
    dockerd.load_image(layout, reference)
    pushed = dockerd.docker("push", reference)

    assert installed.returncode == 1
    assert "nothing was written" in installed.stderr
    assert f"--fingerprint gave {command[position][:2].upper()}:" in installed.stderr
    assert not (dockerd.etc_docker / "certs.d" / authority).exists()
    assert pushed.returncode == 1
    assert last_line(pushed).endswith("x509: certificate signed by unknown authority")
