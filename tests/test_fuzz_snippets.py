"""Fuzzing the snippet parsers with hypothesis: any file content gives output or a clean error.

For each client's file format, arbitrary text (and text built from the format's
own tokens, which reaches deeper) is merged with --merge. The only outcomes
allowed are exit 0 with output or exit 1 with one `Error:` line, and the file on
disk is never changed, since --write is not given.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import main

FORMAT_TOKENS = {
    "docker": ['{', '}', '[', ']', ',', ':', '"insecure-registries"', '"registry-mirrors"', '"a:5000"', '"x"', '1', 'null', ' ', '\n', '"insecure-registry"', '"10.0.0.0/8"'],
    "containerd": ["version = 2", "version = 3", "[plugins]", '[plugins."io.containerd.grpc.v1.cri".registry]', 'config_path = "/etc"', "\n", "=", '"', "[", "]", "x", "[[a]]"],
    "podman": ["[[registry]]", 'location = "a:5000"', "insecure = true", "[registries.insecure]", "registries = []", 'unqualified-search-registries = ["docker.io"]', "\n", "=", '"', "["],
    "k3s": ["mirrors:", "configs:", '  "a:5000":', "    endpoint:", '      - "http://a:5000"', "    tls:", "      ca_file: x", "\n", "- ", ": ", "{", "[", "&a", "*a", "'"],
    "buildkit": ['[registry."a:5000"]', "http = true", 'ca = ["/x"]', "\n", "=", '"', "[", "]", "debug = true"],
}

MERGE_TARGET = {"docker": "daemon.json", "containerd": "config.toml", "podman": "registries.conf", "k3s": "registries.yaml", "buildkit": "buildkitd.toml"}


def run_merge(client: str, content: bytes) -> tuple[int, bytes]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / MERGE_TARGET[client]
        path.write_bytes(content)
        if client == "containerd":
            args = ["snippet", "containerd", "registry.example:5000", "--insecure", "--containerd-config", str(path)]
        else:
            args = ["snippet", client, "registry.example:5000", "--insecure", "--merge", str(path)]
        try:
            code = main(args)
        except SystemExit as exc:  # argparse only; never expected here
            code = exc.code
        return code, path.read_bytes()


def token_text(client: str):
    return st.lists(st.sampled_from(FORMAT_TOKENS[client]), max_size=40).map("".join)


FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("client", sorted(MERGE_TARGET))
@FUZZ
@given(data=st.data())
def test_merge_never_crashes(client, data, capsys):
    text = data.draw(st.one_of(token_text(client), st.text(max_size=200)))
    raw = data.draw(st.one_of(st.just(text.encode()), st.binary(max_size=64)))
    code, after = run_merge(client, raw)
    assert code in (0, 1)
    assert after == raw
    err = capsys.readouterr().err
    if code == 1:
        errors = [line for line in err.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, err
    assert "Traceback" not in err
