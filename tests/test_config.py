"""Configuration parsing: gateway.toml, listen addresses, names, upstream URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Config, load, parse_listen, parse_name, parse_upstream, validate
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_example_config_loads_as_is():
    """The annotated gateway.toml in the repository is valid and means the defaults."""
    config = load(REPO / "gateway.toml")
    validate(config)
    assert [str(l) for l in config.listen] == ["127.0.0.1:5443"]
    assert str(config.upstream) == "http://127.0.0.1:5000"
    assert config.idle_timeout == 900
    assert config.certs_dir == REPO / "certs"
    assert config.cert is None and config.key is None


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:5443", "127.0.0.1", 5443), ("[::1]:5443", "::1", 5443), ("0.0.0.0:0", "0.0.0.0", 0), ("localhost:443", "localhost", 443)],
)
def test_parse_listen(text, host, port):
    listener = parse_listen(text)
    assert (listener.host, listener.port) == (host, port)


@pytest.mark.parametrize("text", ["::1:5443", "5443", "127.0.0.1:", "127.0.0.1:70000", "[::1]5443", "host:port"])
def test_parse_listen_rejects(text):
    with pytest.raises(ConfigError) as raised:
        parse_listen(text)
    assert repr(text) in str(raised.value)


def test_parse_upstream_variants():
    assert str(parse_upstream("http://127.0.0.1:5000/")) == "http://127.0.0.1:5000"
    assert str(parse_upstream("https://registry.lan")) == "https://registry.lan"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("127.0.0.1:5000", "with its scheme"),
        ("ftp://h:1", "must be http or https"),
        ("http://h:port", "does not parse"),
        ("http://h:1/v2/", "only scheme, host and port"),
        ("http://user:pw@h:1", "credentials"),
    ],
)
def test_parse_upstream_rejects(text, fragment):
    with pytest.raises(ConfigError) as raised:
        parse_upstream(text)
    assert fragment in str(raised.value)
    assert "pw" not in str(raised.value)


def test_parse_name():
    assert parse_name("Registry.Local") == "registry.local"
    assert parse_name("[::1]") == "::1"
    assert parse_name("192.0.2.10") == "192.0.2.10"
    for bad in ("registry.local:5443", "https://registry.local", "bad name"):
        with pytest.raises(ConfigError):
            parse_name(bad)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("drain_timeout = -1\n", "above 0"),
        ("drain_timeout = true\n", "not a number"),
        ('listen = []\n', "at least one"),
        ('[upstream]\npool_size = 0\n', "at least 1"),
        ('[upstream]\nidle_timeout = "900"\n', "without quotes or unit"),
        ('log_level = "loud"\n', "debug, info"),
        ('trusted_proxies = ["10.0.0.0/33"]\n', "CIDR"),
        ('[[route]]\nprefix = "/v2/x"\nupstream = "http://127.0.0.1:1"\n', "/v2/"),
        ('[[route]]\nprefix = "/auth"\n', "required"),
        ('[tls]\ncertificate = "x"\n', "tls."),
        ('fast_path = "yes"\n', "fast_path"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, text))
    assert fragment in str(raised.value)


def test_relative_paths_follow_config_file(tmp_path):
    config = load(write(tmp_path, '[tls]\ncert = "c.pem"\nkey = "k.pem"\ncerts_dir = "mine"\n'))
    assert config.cert == tmp_path / "c.pem"
    assert config.certs_dir == tmp_path / "mine"


def test_validate_rejects_forwarding_to_itself():
    config = Config()
    config.listen = [parse_listen("127.0.0.1:5000")]
    with pytest.raises(ConfigError, match="forward to itself"):
        validate(config)


def test_certificate_names_include_loopback():
    config = Config(names=["registry.local"])
    assert config.certificate_names() == ["registry.local", "localhost", "127.0.0.1", "::1"]


def test_wildcard_name_rejected():
    with pytest.raises(ConfigError, match="not a wildcard"):
        parse_name("*.local")


def test_errors_name_the_file(tmp_path):
    path = write(tmp_path, "drain_timeout = -1\n")
    with pytest.raises(ConfigError) as raised:
        load(path)
    assert str(path) in str(raised.value)
    assert "above 0" in str(raised.value)


def test_fast_path_switch(tmp_path):
    assert load(None).fast_path is True
    assert load(write(tmp_path, "fast_path = false\n")).fast_path is False
