"""The event-loop choice: uvloop when installed, asyncio's loop always available."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from gateway import eventloop, lab
from gateway.config import load
from gateway.errors import ConfigError

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def test_asyncio_choice_uses_standard_loop():
    assert eventloop.loop_factory("asyncio") is asyncio.new_event_loop


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_auto_choice_prefers_uvloop():
    assert eventloop.loop_name(eventloop.loop_factory("auto")) == "uvloop"


def test_event_loop_key_rejects_unknown(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('event_loop = "trio"\n')
    with pytest.raises(ConfigError) as raised:
        load(path)
    assert "'trio'" in str(raised.value)


@pytest.mark.parametrize(
    "choice",
    ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed"))],
)
def test_serve_pushes_and_pulls_on_loop(choice, registry, local_ca, cert_dir, tmp_path):
    """`serve` on each event loop carries a skopeo push and the pull back."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'listen = ["127.0.0.1:0"]\nevent_loop = "{choice}"\nupstream = "{registry.url}"\n')
    layout = tmp_path / "image"
    lab.build_oci_layout(layout, "v1", (1024, 300_000), seed=41 if choice == "asyncio" else 42)
    process = lab.GatewayProcess(
        ["--config", str(config), "--certs-dir", str(local_ca), "--name", "localhost"]
    ).start()
    try:
        target = f"docker://localhost:{process.port}/loops/{choice}:v1"
        pushed = lab.skopeo("copy", "--dest-cert-dir", str(cert_dir), f"oci:{layout}:v1", target)
        assert pushed.returncode == 0, pushed.stderr
        pulled = lab.skopeo(
            "copy", "--src-cert-dir", str(cert_dir), target, f"oci:{tmp_path / 'back'}:v1"
        )
        assert pulled.returncode == 0, pulled.stderr
    finally:
        process.stop()
