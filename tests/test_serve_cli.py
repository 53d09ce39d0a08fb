"""`registry-gateway serve` as a process: start-up output, bad config, signals, listeners."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from gateway import certs, lab
from gateway.cli import main


def run_serve(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_unknown_config_key(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('listen = ["127.0.0.1:0"]\nlisten_adress = "x"\n')
    assert_one_line_error(run_serve("--config", str(config)), "listen_adress", str(config))


def test_unknown_nested_key(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('[upstream]\nurl = "http://127.0.0.1:5000"\nread_timeout = 5\n')
    assert_one_line_error(run_serve("--config", str(config)), "upstream.", "read_timeout")


def test_bad_upstream_url(tmp_path):
    assert_one_line_error(
        run_serve("--upstream", "127.0.0.1:5000", "--certs-dir", str(tmp_path)),
        "'127.0.0.1:5000'", "http://127.0.0.1:5000",
    )


def test_invalid_toml(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('listen = ["127.0.0.1:0"]\nnames = = []\n')
    assert_one_line_error(run_serve("--config", str(config)), "Invalid TOML", "line")


def test_missing_config_file(tmp_path):
    assert_one_line_error(run_serve("--config", str(tmp_path / "nope.toml")), "not found")


def test_unreadable_cert(tmp_path):
    key = tmp_path / "k.pem"
    key.write_bytes(b"")
    assert_one_line_error(
        run_serve("--cert", str(tmp_path / "missing.crt"), "--key", str(key), "--listen", "127.0.0.1:0"),
        "missing.crt",
    )


def test_cert_without_key(tmp_path):
    assert_one_line_error(run_serve("--cert", str(tmp_path / "a.crt")), "--key")


def test_key_not_matching_cert(tmp_path, local_ca):
    other = certs.generate_key()
    certs.write_key(tmp_path / "other.key", other)
    assert_one_line_error(
        run_serve(
            "--cert", str(local_ca / certs.LEAF_CERT), "--key", str(tmp_path / "other.key"),
            "--listen", "127.0.0.1:0",
        ),
        "does not match",
    )


def test_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(
            run_serve("--listen", f"127.0.0.1:{port}", "--certs-dir", str(tmp_path)),
            f"127.0.0.1:{port}", "already in use",
        )


def test_port_in_use_keeps_running_leaf(tmp_path, registry):
    """A second start on a busy port with a new name fails before it reissues the leaf."""
    folder = tmp_path / "certs"
    running = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--certs-dir", str(folder)]
    ).start()
    try:
        leaf_before = (folder / "gateway.crt").read_bytes()
        result = run_serve(
            "--listen", f"127.0.0.1:{running.port}", "--upstream", registry.url,
            "--certs-dir", str(folder), "--name", "other.local",
        )
    finally:
        running.stop()

    assert_one_line_error(result, f"127.0.0.1:{running.port}", "already in use")
    assert "Issued" not in result.stdout
    assert (folder / "gateway.crt").read_bytes() == leaf_before
    assert list(folder.glob("*.bak-*")) == []


def test_workers_reject_busy_port(tmp_path, registry):
    """workers = 2 on a port that another gateway's workers share fails instead of joining them."""
    first_config = tmp_path / "first.toml"
    first_config.write_text('listen = ["127.0.0.1:0"]\nworkers = 2\n')
    running = lab.GatewayProcess(
        ["--config", str(first_config), "--upstream", registry.url, "--certs-dir", str(tmp_path / "a")]
    ).start()
    second_config = tmp_path / "second.toml"
    second_config.write_text(f'listen = ["127.0.0.1:{running.port}"]\nworkers = 2\n')
    # Started with lab.GatewayProcess, whose stop() also ends the workers if the
    # second gateway does start.
    second = lab.GatewayProcess(
        ["--config", str(second_config), "--upstream", registry.url, "--certs-dir", str(tmp_path / "b")]
    )
    try:
        with pytest.raises(RuntimeError) as raised:
            second.start()
    finally:
        second.stop()
        running.stop()

    assert "gateway exited with 1" in str(raised.value)
    assert f"Error: Cannot listen on 127.0.0.1:{running.port}: the address is already in use" in str(
        raised.value
    )


def test_bad_listen_value(tmp_path):
    assert_one_line_error(run_serve("--listen", "::1:5443"), "[::1]:5443")


def test_name_with_port_rejected(capsys):
    assert main(["serve", "--name", "registry.local:5443", "--listen", "127.0.0.1:0"]) == 1
    assert "without the port" in capsys.readouterr().err


def test_first_start_creates_ca_and_reuses_it(tmp_path, registry):
    """The first start creates a CA and leaf and prints where a client must put the CA."""
    folder = tmp_path / "certs"
    args = [
        "--listen", "127.0.0.1:0", "--upstream", registry.url,
        "--certs-dir", str(folder), "--name", "registry.local",
    ]
    first = lab.GatewayProcess(args).start()
    first.stop()
    assert "Created a local CA" in first.output
    assert f"Clients must trust the CA {folder / 'ca.crt'}" in first.output
    assert f"/etc/docker/certs.d/registry.local:{first.port}/ca.crt" in first.output
    assert oct((folder / "gateway.key").stat().st_mode & 0o777) == "0o600"
    assert oct((folder / "ca.key").stat().st_mode & 0o777) == "0o400"
    leaf = certs.load_certs(folder / "gateway.crt")[0]
    for name in ("registry.local", "localhost", "127.0.0.1", "::1"):
        assert certs.name_covered(leaf, name), name
    ca_before = (folder / "ca.crt").read_bytes()
    leaf_before = (folder / "gateway.crt").read_bytes()

    second = lab.GatewayProcess(args).start()
    second.stop()
    assert "Created a local CA" not in second.output
    assert (folder / "ca.crt").read_bytes() == ca_before
    assert (folder / "gateway.crt").read_bytes() == leaf_before


def test_lab_gateway_removes_its_log(registry, local_ca):
    """lab.GatewayProcess.stop keeps the output and deletes its temporary log file."""
    process = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--certs-dir", str(local_ca)]
    ).start()
    log_path = Path(process._out.name)
    assert log_path.exists()

    process.stop()

    assert not log_path.exists()
    assert "Stopped" in process.output
    assert process.read_output() == process.output


def test_lab_gateway_failed_start_removes_its_log(tmp_path):
    """A gateway that exits at start-up raises with its output and leaves no log file."""
    process = lab.GatewayProcess(["--config", str(tmp_path / "missing.toml")])
    with pytest.raises(RuntimeError, match="Config file .* not found"):
        process.start()
    assert not Path(process._out.name).exists()


def test_new_name_reissues_leaf_same_ca(tmp_path, registry):
    folder = tmp_path / "certs"
    base = ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--certs-dir", str(folder)]
    lab.GatewayProcess([*base, "--name", "a.local"]).start().stop()
    ca_before = (folder / "ca.crt").read_bytes()
    second = lab.GatewayProcess([*base, "--name", "b.local"]).start()
    second.stop()
    assert (folder / "ca.crt").read_bytes() == ca_before
    leaf = certs.load_certs(folder / "gateway.crt")[0]
    assert certs.name_covered(leaf, "b.local")


def tls_client(ca: str, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if version is not None:
        context.minimum_version = version
        context.maximum_version = version
    return context


def test_tls_versions_and_alpn(gateway_process, local_ca):
    """TLS 1.2 and 1.3 handshake with ALPN http/1.1; TLS 1.1 is refused."""
    ca = str(local_ca / certs.CA_CERT)
    port = gateway_process.port
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = tls_client(ca, version)
        context.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
                assert tls.selected_alpn_protocol() == "http/1.1"
    old = tls_client(ca)
    with warnings.catch_warnings():
        # Python deprecates TLS 1.1 itself; offering it is the point of this check.
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            old.wrap_socket(raw, server_hostname="localhost")


def test_plain_http_on_tls_port(gateway_process):
    """A plain-HTTP request gets a 400 in registry JSON naming the https URL."""
    status, headers, body = lab.http_get(f"http://127.0.0.1:{gateway_process.port}/v2/")
    assert status == 400
    assert headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert headers["Content-Type"] == "application/json"
    import json

    error = json.loads(body)["errors"][0]
    assert error["detail"]["url"] == f"https://127.0.0.1:{gateway_process.port}/"
    assert "HTTPS" in error["message"]


def test_ipv4_and_ipv6_listeners(tmp_path, registry, local_ca):
    """Two --listen values, one IPv6 written in brackets, both serve."""
    process = lab.GatewayProcess(
        [
            "--listen", "127.0.0.1:0", "--listen", "[::1]:0",
            "--upstream", registry.url, "--certs-dir", str(local_ca),
        ]
    ).start()
    try:
        assert len(process.addresses) == 2
        assert process.addresses[1].startswith("[::1]:")
        context = tls_client(str(local_ca / certs.CA_CERT))
        for address in process.addresses:
            status, headers, _ = lab.http_get(f"https://{address}/v2/", context=context)
            assert status == 200
            assert headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    finally:
        process.stop()


def test_sigterm_drains_inflight_upload(tmp_path, registry, local_ca):
    """SIGTERM during an upload lets it finish, then the gateway exits 0."""
    process = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--certs-dir", str(local_ca)]
    ).start()
    context = tls_client(str(local_ca / certs.CA_CERT))
    base = f"https://localhost:{process.port}"
    request = urllib.request.Request(f"{base}/v2/drain/app/blobs/uploads/", method="POST")
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        location = response.headers["Location"]

    data = os.urandom(4 * 1024 * 1024)
    signalled = threading.Event()

    def slow_body():
        for start in range(0, len(data), 256 * 1024):
            if start == 512 * 1024:
                os.kill(process.process.pid, signal.SIGTERM)
                signalled.set()
            time.sleep(0.05)
            yield data[start : start + 256 * 1024]

    patch = urllib.request.Request(
        location, data=slow_body(), method="PATCH",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(patch, context=context, timeout=30) as response:
        assert response.status == 202
        location = response.headers["Location"]
    assert signalled.is_set()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    put = urllib.request.Request(f"{location}&digest={digest}", method="PUT", data=b"")
    try:
        # The gateway stopped accepting after SIGTERM, so this new connection is refused.
        urllib.request.urlopen(put, context=context, timeout=5)
        accepted_after_stop = True
    except OSError:
        accepted_after_stop = False
    assert process.process.wait(15) == 0
    assert not accepted_after_stop
    assert "Stopped" in process.read_output()
    # The gateway has exited, so stop() only removes the log file.
    process.stop()


def test_python_dash_m_and_console_script():
    """`python -m gateway --version` and the console entry point agree."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0
    assert result.stdout.startswith("registry-gateway ")


def test_serve_help_matches_readme(capsys):
    """`serve --help` spells each option's value as the README's option list does."""
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--config FILE", "--listen HOST:PORT", "--upstream URL", "--cert FILE"):
        assert option in out, option


def test_reissue_keeps_old_names_and_backs_up(tmp_path, registry):
    """A leaf that lacks a required name is reissued with all its old names, the old pair kept."""
    folder = tmp_path / "certs"
    ca_cert, ca_key, _ = certs.ensure_local_ca(folder)
    key = certs.generate_key()
    leaf = certs.issue_leaf(ca_cert, ca_key, key, ["registry.local", "192.0.2.10"])
    certs.write_certs(folder / certs.LEAF_CERT, [leaf])
    certs.write_key(folder / certs.LEAF_KEY, key)
    old_leaf = (folder / certs.LEAF_CERT).read_bytes()

    process = lab.GatewayProcess(
        ["--listen", "127.0.0.1:0", "--upstream", registry.url, "--certs-dir", str(folder), "--name", "other.local"]
    ).start()
    process.stop()
    new_leaf = certs.load_certs(folder / certs.LEAF_CERT)[0]
    for name in ("registry.local", "192.0.2.10", "other.local", "localhost", "127.0.0.1", "::1"):
        assert certs.name_covered(new_leaf, name), name
    backups = sorted(p.name for p in folder.iterdir() if ".bak-" in p.name)
    assert len(backups) == 2, backups
    assert any(b.startswith("gateway.crt.bak-") for b in backups)
    assert (folder / [b for b in backups if b.startswith("gateway.crt")][0]).read_bytes() == old_leaf
    assert "Moved the previous file to" in process.output


def test_certs_dir_that_is_a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("")
    assert_one_line_error(run_serve("--certs-dir", str(path), "--listen", "127.0.0.1:0"), "is a file")
