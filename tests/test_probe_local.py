"""`probe --local`: daemon.json, certs.d and hosts file audits on fixture files."""

from __future__ import annotations

import json

import pytest

from gateway import probe, probe_local
from tests import probe_support as support

TARGET = "registry.invalid:5000"


def audit(tmp_path, daemon_json: str | None, target: str = TARGET, hosts: str = ""):
    path = tmp_path / "daemon.json"
    if daemon_json is not None:
        path.write_text(daemon_json)
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(hosts)
    paths = probe_local.AuditPaths(
        daemon_json=path,
        certs_dir=tmp_path / "certs.d",
        hosts_file=hosts_file,
        docker_env_file=tmp_path / "default-docker",
        containerd_config=tmp_path / "containerd.toml",
        registries_conf=tmp_path / "registries.conf",
        docker_bin=str(tmp_path / "no-docker"),
    )
    return probe_local.audit(probe.parse_target(target), paths)


def texts(result, level: str) -> list[str]:
    return [f.text for f in result.findings if f.level == level]


def test_local_exact_entry_is_insecure(tmp_path):
    result = audit(tmp_path, json.dumps({"insecure-registries": [TARGET]}))
    assert result.insecure
    assert result.insecure_reason == f"the entry {TARGET!r} matches exactly"
    assert result.ok


def test_local_no_daemon_json_is_secure(tmp_path):
    result = audit(tmp_path, None)
    assert not result.insecure
    assert any("There is no" in t for t in texts(result, "Note"))


def test_local_loopback_is_insecure_by_default(tmp_path):
    """127.0.0.0/8 is insecure in every dockerd configuration."""
    result = audit(tmp_path, "{}", target="127.0.0.1:5000")
    assert result.insecure
    assert "127.0.0.0/8" in result.insecure_reason


def test_local_cidr_after_resolution(tmp_path):
    result = audit(
        tmp_path,
        json.dumps({"insecure-registries": ["127.0.0.0/24"]}),
        target="localhost:5000",
    )
    assert result.insecure
    assert result.insecure_reason.startswith("127.0.0.1 lies in 127.0.0.0/24")


def test_local_singular_key(tmp_path):
    """The CLI flag's name used as a daemon.json key is ignored."""
    result = audit(
        tmp_path,
        json.dumps({"insecure-registry": [TARGET], "tlsverify": True, "debug": False}),
    )
    assert not result.insecure
    assert any(
        "'insecure-registry'" in t and "rename it" in t for t in texts(result, "Error")
    )


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        (
            '{"log-driver":"json-file"}\n{ "insecure-registries":"192.0.2.10:5000"] }\n',
            2,
            1,
        ),
        ('{"insecure-registries": ["192.0.2.10:5000"],}', 1, 45),
    ],
)
def test_local_json_syntax_error_line_and_column(tmp_path, text, line, column):
    result = audit(tmp_path, text)
    errors = texts(result, "Error")
    assert len(errors) == 1
    assert f"at line {line}, column {column}" in errors[0]
    assert "dockerd does not start" in errors[0]


def test_local_string_not_list(tmp_path):
    result = audit(tmp_path, json.dumps({"insecure-registries": "192.0.2.10:5000"}))
    assert any(
        'Write "insecure-registries": ["192.0.2.10:5000"]' in t
        for t in texts(result, "Error")
    )


def test_local_scheme_prefix_is_stripped(tmp_path):
    """dockerd strips http:// with a warning, so the entry still matches."""
    result = audit(tmp_path, json.dumps({"insecure-registries": [f"http://{TARGET}"]}))
    assert result.insecure
    assert any("contains 'http://'" in t for t in texts(result, "Warning"))


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("registry.invalid", "has no port, so it does not cover"),
        ("registry.invalid:5299", "has port 5299"),
        ("REGISTRY.INVALID:5000", "only in case"),
        (" registry.invalid:5000 ", "spaces around it"),
    ],
)
def test_local_near_misses(tmp_path, entry, expected):
    result = audit(tmp_path, json.dumps({"insecure-registries": [entry]}))
    assert any(expected in t for t in texts(result, "Warning"))


@pytest.mark.parametrize(
    "entry", ["registry.invalid:5000/", "*.invalid:5000", "ftp://registry.invalid:5000"]
)
def test_local_entries_dockerd_rejects(tmp_path, entry):
    result = audit(tmp_path, json.dumps({"insecure-registries": [entry]}))
    assert not result.ok
    assert not result.insecure


def test_local_certs_d_mistakes(tmp_path):
    """A folder without the port and a CA named ca.cert are both reported."""
    (tmp_path / "certs.d" / "registry.invalid").mkdir(parents=True)
    (tmp_path / "certs.d" / "registry.invalid" / "ca.pem").write_text("")
    (tmp_path / "certs.d" / TARGET).mkdir()
    (tmp_path / "certs.d" / TARGET / "ca.cert").write_text("")
    result = audit(tmp_path, "{}")
    warnings = texts(result, "Warning")
    assert any("named without the port" in t for t in warnings)
    assert any("ca.cert' is not read as a CA" in t for t in warnings)


def test_local_certs_d_good_ca(tmp_path):
    (tmp_path / "certs.d" / TARGET).mkdir(parents=True)
    (tmp_path / "certs.d" / TARGET / "ca.crt").write_text("")
    result = audit(tmp_path, "{}")
    assert result.ca_files == [str(tmp_path / "certs.d" / TARGET / "ca.crt")]


def test_local_hosts_file_entry(tmp_path):
    result = audit(tmp_path, "{}", hosts="192.0.2.10 registry.invalid registry\n")
    assert result.hosts_addresses == ["192.0.2.10"]


def test_local_cli_json(tmp_path):
    (tmp_path / "daemon.json").write_text(json.dumps({"insecure-registries": [TARGET]}))
    status, output, _ = support.cli(
        "--local",
        TARGET,
        "--daemon-json",
        str(tmp_path / "daemon.json"),
        "--cert-dir",
        str(tmp_path / "certs.d"),
        "--hosts-file",
        str(tmp_path / "hosts"),
        "--containerd-config",
        str(tmp_path / "containerd.toml"),
        "--registries-conf",
        str(tmp_path / "registries.conf"),
        "--json",
    )
    assert status == 0
    data = json.loads(output)
    assert data["insecure"] is True
    assert data["entries"] == [TARGET]


def test_local_env_file_ignored_under_systemd(tmp_path):
    """DOCKER_OPTS in /etc/default/docker is dead under systemd; the entry belongs in daemon.json."""
    (tmp_path / "default-docker").write_text(
        "# Docker Upstart and SysVinit configuration file\n"
        'DOCKER_OPTS="--insecure-registry 192.0.2.10:5000"\n'
    )
    result = audit(tmp_path, None, target="192.0.2.10:5000")
    assert not result.insecure
    warning = next(t for t in texts(result, "Warning") if "systemd" in t)
    assert "registry-gateway snippet docker 192.0.2.10:5000 --insecure" in warning


CONTAINERD_V2 = """
version = 2
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.invalid"]
  endpoint = ["http://registry.invalid:5000"]
"""


def test_local_containerd_mirror_key_without_port(tmp_path):
    (tmp_path / "containerd.toml").write_text(CONTAINERD_V2)
    result = audit(tmp_path, json.dumps({"insecure-registries": [TARGET]}))
    assert any("mirror key 'registry.invalid'" in t for t in texts(result, "Warning"))
    notes = texts(result, "Note")
    assert any("sets no config_path" in t for t in notes)
    assert any("does not affect kubelet" in t for t in notes)


def test_local_containerd_config_path_hosts_toml(tmp_path):
    hosts_dir = tmp_path / "containerd-certs.d"
    (hosts_dir / TARGET).mkdir(parents=True)
    (hosts_dir / TARGET / "hosts.toml").write_text(
        'server = "http://registry.invalid:5000"\n'
    )
    (tmp_path / "containerd.toml").write_text(
        f'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{hosts_dir}"\n'
    )
    result = audit(tmp_path, "{}")
    assert any(
        f"{TARGET}/hosts.toml', which exists" in t for t in texts(result, "Note")
    )


def test_local_registries_conf_mixed_versions(tmp_path):
    """A v1 [registries.insecure] table added to a v2 file breaks podman."""
    (tmp_path / "registries.conf").write_text(
        'unqualified-search-registries = ["docker.io"]\n'
        '[[registry]]\nlocation = "docker.io"\n'
        '[registries.insecure]\nregistries = ["registry.invalid:5000"]\n'
    )
    result = audit(tmp_path, "{}")
    assert any(
        "mixing sysregistry v1/v2 is not supported" in t for t in texts(result, "Error")
    )


def test_local_registries_conf_v1_only(tmp_path):
    (tmp_path / "registries.conf").write_text(
        '[registries.search]\nregistries = ["docker.io"]\n'
        '[registries.insecure]\nregistries = ["hub.invalid:9080"]\n'
    )
    result = audit(tmp_path, "{}")
    assert any(
        "must be in v2 format but is in v1" in t for t in texts(result, "Warning")
    )


def test_local_registries_conf_v2_insecure(tmp_path):
    (tmp_path / "registries.conf").write_text(
        f'[[registry]]\nlocation = "{TARGET}"\ninsecure = true\n'
    )
    result = audit(tmp_path, "{}")
    assert any("insecure for podman and skopeo" in t for t in texts(result, "Note"))


def test_local_broken_json_and_no_daemon(tmp_path):
    """When daemon.json does not parse and no dockerd answers, the audit says why."""
    result = audit(tmp_path, '{"insecure-registries": ["registry.invalid:5000",]}')
    assert any("that is why dockerd is not running" in t for t in texts(result, "Note"))


def test_local_broken_json_headline(tmp_path):
    """A daemon.json that does not parse: the headline states dockerd will not start, with line and column."""
    result = audit(tmp_path, '{"insecure-registries": ["192.0.2.10:5000"],}')
    text = probe_local.render(result)
    headline = text.splitlines()[0]
    assert headline == (
        f"{TARGET}: dockerd will not start with {str(tmp_path / 'daemon.json')!r}, because "
        "the file is not valid JSON: Expecting property name enclosed in double quotes "
        "at line 1, column 45."
    )
    assert "makes it secure" not in text
    assert "treats registry.invalid:5000 as secure" not in text
    assert result.daemon_json_error.endswith("at line 1, column 45")


def test_local_daemon_json_not_object_headline(tmp_path):
    """A daemon.json holding a JSON list: dockerd will not start with it either."""
    result = audit(tmp_path, '["insecure-registries"]')
    headline = probe_local.render(result).splitlines()[0]
    assert headline.endswith("because the file is a JSON list, not the one JSON object dockerd expects.")


def test_local_containerd_config_missing(tmp_path):
    """No containerd config.toml: the note states the file does not exist, not a missing config_path."""
    result = audit(tmp_path, "{}")
    notes = texts(result, "Note")
    assert any(
        f"The containerd config {str(tmp_path / 'containerd.toml')!r} does not exist" in t
        for t in notes
    )
    assert not any("sets no config_path" in t for t in notes)
    assert any("does not affect kubelet" in t for t in notes)
