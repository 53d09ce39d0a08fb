"""`snippet docker --insecure --write` against a real dockerd: the push it fixes."""

from __future__ import annotations

import pytest

from gateway import lab
from tests.dockerd import TEST_NAME, last_line
from tests.snippet_helpers import run_snippet

pytestmark = pytest.mark.dockerd


@pytest.fixture
def plain_registry(tmp_path):
    """A plain-HTTP registry on [::1], which dockerd reaches as registry.test, not loopback."""
    process = lab.RegistryProcess(host="::1")
    process.workdir = tmp_path / "registry"
    process.workdir.mkdir()
    process.start()
    yield process
    process.stop()


@pytest.fixture
def restored_daemon_json(dockerd):
    """Give the test dockerd's daemon.json and put the original back afterwards."""
    original = dockerd.daemon_json.read_bytes()
    yield dockerd.daemon_json
    for backup in dockerd.etc_docker.glob("daemon.json.bak-*"):
        backup.unlink()
    if dockerd.daemon_json.read_bytes() != original:
        dockerd.daemon_json.write_bytes(original)
        dockerd.reload()


def test_push_works_after_snippet(capsys, tmp_path, dockerd, plain_registry, restored_daemon_json):
    """The push fails, the snippet merges and writes the entry, SIGHUP, the push succeeds."""
    name = f"{TEST_NAME}:{plain_registry.port}"
    reference = f"{name}/snippet/app:v1"
    layout = tmp_path / "layout"
    lab.build_oci_layout(layout, layer_sizes=(1000, 20_000), seed=57)
    dockerd.load_image(layout, reference)
    daemon_json = restored_daemon_json
    daemon_json.write_text('{\n  "debug": false,\n  "max-concurrent-uploads": 3\n}\n')
    dockerd.reload()
    original = daemon_json.read_bytes()

    before = dockerd.docker("push", reference)
    assert before.returncode == 1
    assert last_line(before) == (
        f'Get "https://{name}/v2/": http: server gave HTTP response to HTTPS client'
    )

    status, out, err = run_snippet(
        capsys, "docker", name, "--insecure", "--merge", daemon_json, "--write"
    )
    assert status == 0, err
    assert daemon_json.read_text() == out
    dockerd.reload()

    info = dockerd.docker("info", "--format", "{{json .RegistryConfig.IndexConfigs}}")
    assert f'"{name}"' in info.stdout
    after = dockerd.docker("push", reference)
    assert after.returncode == 0, after.stderr

    backups = list(daemon_json.parent.glob("daemon.json.bak-*"))
    assert len(backups) == 1
    assert backups[0].read_bytes() == original
