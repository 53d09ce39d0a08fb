"""Every key of the probe's `--json` evidence object is documented in docs/probe.md."""

from __future__ import annotations

import json
import re
import ssl
from pathlib import Path

import pytest

from gateway import certs, lab, probe
from tests import probe_support as support
from tests.probe_support import make_ca, make_leaf, run_probe
from tests.test_probe_mtls import mtls_gateway  # noqa: F401 (a fixture)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "probe.md"
DOC_ROW = re.compile(r"^\| `([a-z0-9_.\[\]]+)` \|")


def documented_keys() -> set[str]:
    """Return the keys listed in the Evidence keys table of docs/probe.md."""
    text = DOCS.read_text()
    section = text.split("### Evidence keys", 1)[1].split("\n#", 1)[0]
    return {m.group(1) for line in section.splitlines() if (m := DOC_ROW.match(line))}


def evidence_keys(evidence: dict) -> set[str]:
    """Flatten the evidence into `key`, `parent.key` and `list[].key` names.

    One level deep only, because `auth.params` contains the challenge's own names.
    """
    keys = set()
    for key, value in evidence.items():
        keys.add(key)
        if isinstance(value, dict):
            keys |= {f"{key}.{sub}" for sub in value}
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            keys |= {f"{key}[].{sub}" for item in value for sub in item}
    return keys


def assert_documented(report: probe.Report) -> None:
    data = json.loads(json.dumps(report.to_json()))
    undocumented = evidence_keys(data["evidence"]) - documented_keys()
    assert not undocumented, f"{report.verdict}: {sorted(undocumented)}"


def test_docs_table_parses():
    keys = documented_keys()
    assert "address" in keys
    assert "v2.tls_alert" in keys
    assert "certificates[].sha256" in keys


def test_keys_plain_http_registry(registry):
    assert_documented(run_probe(registry.url.removeprefix("http://")))


def test_keys_gateway_tls(gateway_process, local_ca):
    report = run_probe(gateway_process.addresses[0], ca=[local_ca / certs.CA_CERT])
    assert report.verdict == probe.TLS_OK
    assert_documented(report)


def test_keys_gateway_mtls(mtls_gateway, local_ca):  # noqa: F811
    report = run_probe(mtls_gateway.addresses[0], ca=[local_ca / certs.CA_CERT])
    assert report.verdict == probe.CLIENT_CERT_REQUIRED
    assert_documented(report)


def test_keys_untrusted_tls(gateway_process):
    report = run_probe(gateway_process.addresses[0])
    assert report.verdict == probe.UNKNOWN_AUTHORITY
    assert_documented(report)


def test_keys_refused():
    report = run_probe(f"127.0.0.1:{lab.free_port()}")
    assert report.verdict == probe.REFUSED
    assert_documented(report)


def test_keys_unresolvable():
    report = run_probe("registry.invalid:5231")
    assert report.verdict == probe.UNRESOLVABLE
    assert_documented(report)


def test_keys_not_a_registry(tmp_path):
    server = support.http_server(tmp_path)
    try:
        report = run_probe(f"127.0.0.1:{server.port}")
    finally:
        support.stop(server)
    assert report.verdict == probe.NOT_A_REGISTRY
    assert_documented(report)


@pytest.mark.parametrize("behaviour", ["close", "reset", "banner", "tls-alert"])
def test_keys_misbehaving_listener(tmp_path, behaviour):
    root = make_ca("keys test root")
    leaf = make_leaf(root, ["127.0.0.1", "localhost"])
    cert_path, key_path = support.write_pair(tmp_path / "server", [leaf.cert], leaf.key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    context.sni_callback = lambda *_: ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
    with support.RawServer(behaviour, context) as server:
        report = run_probe(f"localhost:{server.port}")
    assert_documented(report)


def test_keys_push_check(registry):
    report = run_probe(registry.url.removeprefix("http://"), push_check=True)
    assert "upload" in report.evidence
    assert_documented(report)


def test_side_client_when_ctr_fails(gateway_process, local_ca):
    """TLS works on 127.0.0.1, but ctr speaks plain HTTP there: the side is the client."""
    status, out, _ = support.cli(
        gateway_process.addresses[0], "--ca", str(local_ca / certs.CA_CERT), "--json"
    )
    data = json.loads(out)
    assert status == 1
    assert data["verdict"] == probe.TLS_OK
    assert data["ok"] is False
    assert data["side"] == "client"
