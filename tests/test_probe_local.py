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
    return probe_local.audit(
        probe.parse_target(target), path, tmp_path / "certs.d", hosts_file
    )


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
        "--json",
    )
    assert status == 0
    data = json.loads(output)
    assert data["insecure"] is True
    assert data["entries"] == [TARGET]
