"""The gateway's configuration: defaults, `gateway.toml`, and command-line overrides.

Every value is checked here, once, so that the server never starts with a setting
it would fail on later. Each error names the key, the value and the fix.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

from gateway.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:5443"
DEFAULT_UPSTREAM = "http://127.0.0.1:5000"

# The distribution project's nginx recipe uses `proxy_read_timeout 900`.
DEFAULT_IDLE_TIMEOUT = 900.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_POOL_SIZE = 100
DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 4096
# aiohttp's own defaults for one line and for the header count.
DEFAULT_MAX_LINE = 8190
DEFAULT_MAX_HEADERS = 128

# Names a leaf certificate always covers, so that clients on the gateway host work.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
MAX_WORKERS = 256


@dataclass(frozen=True)
class Listener:
    """One address the gateway accepts TLS connections on."""

    host: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


@dataclass(frozen=True)
class Route:
    """A path prefix sent to an upstream other than the registry (a token service)."""

    prefix: str
    upstream: URL


@dataclass
class Config:
    listen: list[Listener] = field(
        default_factory=lambda: [parse_listen(DEFAULT_LISTEN)]
    )
    upstream: URL = field(default_factory=lambda: URL(DEFAULT_UPSTREAM))
    names: list[str] = field(default_factory=list)
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list
    )
    routes: list[Route] = field(default_factory=list)
    cert: Path | None = None
    key: Path | None = None
    certs_dir: Path = Path("certs")
    client_ca: Path | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    pool_size: int = DEFAULT_POOL_SIZE
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    log_level: str = "info"
    client_idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_request_line: int = DEFAULT_MAX_LINE
    max_header_size: int = DEFAULT_MAX_LINE
    max_headers: int = DEFAULT_MAX_HEADERS
    htpasswd: Path | None = None
    event_loop: str = "auto"
    workers: int = 1
    metrics_listen: Listener | None = None
    fast_path: bool = True

    @property
    def primary_name(self) -> str:
        """The public name used when the client's Host is not one of ours."""
        if self.names:
            return self.names[0]
        host = self.listen[0].host
        return host if host not in ("", "0.0.0.0", "::") else "localhost"

    def certificate_names(self) -> list[str]:
        """Every name and address the generated leaf certificate must cover."""
        names: list[str] = []
        for name in [*self.names, *LOOPBACK_NAMES]:
            if name not in names:
                names.append(name)
        for listener in self.listen:
            if listener.host not in ("", "0.0.0.0", "::") and listener.host not in names:
                names.append(listener.host)
        return names


def format_host_port(host: str, port: int | None) -> str:
    """Join a host and port the way a URL authority writes them (`[::1]:5443`)."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def parse_listen(value: str, key: str = "listen") -> Listener:
    """Parse `HOST:PORT` or `[IPV6]:PORT` into a listener. Errors name the setting `key`."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(
                f"Invalid {key} address {value!r}: write an IPv6 listener as "
                "'[::1]:5443'."
            )
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(
                f"Invalid {key} address {value!r}: give HOST:PORT, for example "
                "'127.0.0.1:5443', or '[::1]:5443' for IPv6."
            )
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(
            f"Invalid port in {key} address {value!r}: use a number from 0 to 65535."
        )
    return Listener(host=host, port=int(port_text))


def parse_upstream(value: str, key: str = "upstream") -> URL:
    """Parse an upstream registry URL: `http://` or `https://`, a host, no path."""
    try:
        url = URL(value.strip())
        url.port  # noqa: B018 - yarl parses the port lazily; an invalid one raises here.
    except (ValueError, TypeError):
        raise ConfigError(
            f"Invalid {key} URL {value!r}: it does not parse (check the host and that the "
            "port is a number), for example 'http://127.0.0.1:5000'."
        ) from None
    if url.scheme and url.scheme not in ("http", "https") and url.host:
        raise ConfigError(
            f"Invalid {key} URL {value!r}: the scheme must be http or https, for example "
            "'http://127.0.0.1:5000'."
        )
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            f"Invalid {key} URL {value!r}: give the registry's address with its "
            "scheme, for example 'http://127.0.0.1:5000'."
        )
    if url.path not in ("", "/") or url.query_string or url.fragment:
        raise ConfigError(
            f"Invalid {key} URL {value!r}: give only scheme, host and port; the "
            "gateway passes every request path through unchanged."
        )
    if url.user or url.password:
        raise ConfigError(
            f"Invalid {key} URL: it contains credentials; the gateway passes the "
            "client's own Authorization header to the registry instead."
        )
    return url.with_path("")


def parse_name(value: str) -> str:
    """Check a public name: a DNS name or an IP address, without scheme or port."""
    name = value.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if "://" in name or "/" in name:
        raise ConfigError(
            f"Invalid name {value!r}: give only the host name, for example "
            "'registry.local', without scheme or path."
        )
    if ":" in name:
        raise ConfigError(
            f"Invalid name {value!r}: give the host name without the port; the "
            "port comes from the listen address."
        )
    if "*" in name:
        raise ConfigError(
            f"Invalid name {value!r}: give the exact names clients use, not a wildcard; "
            "each name is also the address the registry's URLs are rewritten to."
        )
    labels = name.rstrip(".").split(".")
    if not name or not all(
        label and len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)
        for label in labels
    ):
        raise ConfigError(
            f"Invalid name {value!r}: a name is a DNS name such as 'registry.local' "
            "or an IP address."
        )
    return name.rstrip(".")


def parse_network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ConfigError(
            f"Invalid trusted_proxies entry {value!r}: give an address or a CIDR "
            "such as '10.0.0.0/8'."
        ) from None


def _expect(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str):
    value = table[key]
    # bool is an int in Python; a timeout of `true` is a mistake, not 1 second.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(
            f"Invalid value for {where}{key}: {str(value).lower()} is not a number; write a "
            "plain number without quotes or unit, e.g. 30."
        )
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise ConfigError(
            f"Invalid value for {where}{key}: {value!r} is not {_KIND_WORDS[kinds]}; "
            f"write it as {_KIND_EXAMPLES[kinds]}."
        )
    return value


_KIND_WORDS = {
    (int, float): "a number of seconds",
    (int,): "a whole number",
    (str,): "a string",
    (list,): "a list",
    (list, str): "a string or a list of strings",
    (dict,): "a table",
    (bool,): "true or false",
}
_KIND_EXAMPLES = {
    (int, float): "a plain number without quotes or unit, e.g. 30",
    (int,): "a number without quotes, e.g. 100",
    (str,): 'a quoted string, e.g. "certs"',
    (list,): 'a list, e.g. ["registry.local"]',
    (list, str): 'a list, e.g. ["127.0.0.1:5443"]',
    (dict,): "a [section] table",
    (bool,): "true or false without quotes",
}


def _reject_unknown(table: dict[str, Any], known: set[str], where: str, path: Path) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(
                f"Unknown key '{where}{key}' in {path}: remove it, or use one of "
                f"{', '.join(sorted(known))}."
            )


def _positive(value: float, key: str) -> float:
    if value <= 0:
        raise ConfigError(f"Invalid value for {key}: {value!r}; give a number of seconds above 0.")
    return float(value)


def load(path: Path | None) -> Config:
    """Build a Config from defaults and, when given, a TOML file."""
    config = Config()
    if path is None:
        return config
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"Config file {str(path)!r} not found: check the path, or leave out "
            "--config to use the defaults."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read config file {str(path)!r}: {exc}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Invalid TOML in {str(path)!r}: {exc}.") from None

    base = path.resolve().parent
    try:
        _apply_top_level(config, data, path, base)
    except ConfigError as exc:
        if str(path) in str(exc):
            raise
        raise ConfigError(f"In {path}: {exc}") from None
    return config


def _resolve(base: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


def _apply_top_level(config: Config, data: dict[str, Any], path: Path, base: Path) -> None:
    known = {
        "listen",
        "names",
        "trusted_proxies",
        "drain_timeout",
        "log_level",
        "event_loop",
        "workers",
        "metrics_listen",
        "fast_path",
        "upstream",
        "tls",
        "route",
        "limits",
        "auth",
    }
    _reject_unknown(data, known, "", path)

    if "listen" in data:
        listen = _expect(data, "listen", (list, str), "")
        items = [listen] if isinstance(listen, str) else listen
        if not items:
            raise ConfigError(f"Invalid value for listen in {path}: give at least one HOST:PORT.")
        config.listen = [parse_listen(str(item)) for item in items]
    if "names" in data:
        config.names = [parse_name(str(n)) for n in _expect(data, "names", list, "")]
    if "trusted_proxies" in data:
        if not isinstance(data["trusted_proxies"], list):
            raise ConfigError(
                f"Invalid value for trusted_proxies in {path}: give a list of addresses or "
                'CIDRs, e.g. ["10.0.0.0/8"].'
            )
        config.trusted_proxies = [parse_network(str(n)) for n in data["trusted_proxies"]]
    if "drain_timeout" in data:
        config.drain_timeout = _positive(
            _expect(data, "drain_timeout", (int, float), ""), "drain_timeout"
        )
    if "log_level" in data:
        config.log_level = parse_log_level(_expect(data, "log_level", str, ""))
    if "event_loop" in data:
        config.event_loop = parse_event_loop(_expect(data, "event_loop", str, ""))
    if "workers" in data:
        config.workers = parse_workers(_expect(data, "workers", (int, str), ""))
    if data.get("metrics_listen"):
        config.metrics_listen = parse_listen(
            _expect(data, "metrics_listen", str, ""), "metrics_listen"
        )
    if "fast_path" in data:
        config.fast_path = _expect(data, "fast_path", bool, "")

    upstream = data.get("upstream")
    if isinstance(upstream, str):
        config.upstream = parse_upstream(upstream)
    elif isinstance(upstream, dict):
        _apply_upstream(config, upstream, path)
    elif upstream is not None:
        raise ConfigError(
            f"Invalid value for upstream in {path}: give a URL string or an "
            "[upstream] table with url = \"http://HOST:PORT\"."
        )

    if "tls" in data:
        tls = _expect(data, "tls", dict, "")
        _apply_tls(config, tls, path, base)

    if "route" in data:
        routes = _expect(data, "route", list, "")
        config.routes = [_parse_route(route, path) for route in routes]

    if "limits" in data:
        _apply_limits(config, _expect(data, "limits", dict, ""), path)

    if "auth" in data:
        auth = _expect(data, "auth", dict, "")
        _reject_unknown(auth, {"htpasswd"}, "auth.", path)
        if auth.get("htpasswd"):
            config.htpasswd = _resolve(base, _expect(auth, "htpasswd", str, "auth."))


def _apply_limits(config: Config, table: dict[str, Any], path: Path) -> None:
    seconds = {"client_idle_timeout", "header_timeout"}
    counts = {"max_connections", "max_request_line", "max_header_size", "max_headers"}
    _reject_unknown(table, seconds | counts, "limits.", path)
    for key in seconds & table.keys():
        value = _expect(table, key, (int, float), "limits.")
        setattr(config, key, _positive(value, f"limits.{key}"))
    for key in counts & table.keys():
        value = _expect(table, key, int, "limits.")
        if value < 1:
            raise ConfigError(f"Invalid value for limits.{key}: {value}; give at least 1.")
        setattr(config, key, value)


def _apply_upstream(config: Config, table: dict[str, Any], path: Path) -> None:
    _reject_unknown(
        table, {"url", "connect_timeout", "idle_timeout", "pool_size"}, "upstream.", path
    )
    if "url" in table:
        config.upstream = parse_upstream(_expect(table, "url", str, "upstream."))
    if "connect_timeout" in table:
        config.connect_timeout = _positive(
            _expect(table, "connect_timeout", (int, float), "upstream."),
            "upstream.connect_timeout",
        )
    if "idle_timeout" in table:
        config.idle_timeout = _positive(
            _expect(table, "idle_timeout", (int, float), "upstream."),
            "upstream.idle_timeout",
        )
    if "pool_size" in table:
        size = _expect(table, "pool_size", int, "upstream.")
        if size < 1:
            raise ConfigError(
                f"Invalid value for upstream.pool_size: {size}; give at least 1."
            )
        config.pool_size = size


def _apply_tls(config: Config, table: dict[str, Any], path: Path, base: Path) -> None:
    _reject_unknown(table, {"cert", "key", "certs_dir", "client_ca"}, "tls.", path)
    if table.get("cert"):
        config.cert = _resolve(base, _expect(table, "cert", str, "tls."))
    if table.get("key"):
        config.key = _resolve(base, _expect(table, "key", str, "tls."))
    if "certs_dir" in table:
        config.certs_dir = _resolve(base, _expect(table, "certs_dir", str, "tls."))
    if table.get("client_ca"):
        config.client_ca = _resolve(base, _expect(table, "client_ca", str, "tls."))


def _parse_route(table: Any, path: Path) -> Route:
    if not isinstance(table, dict):
        raise ConfigError(
            f"Invalid [[route]] in {path}: each route is a table with prefix and upstream."
        )
    _reject_unknown(table, {"prefix", "upstream"}, "route.", path)
    if "prefix" not in table or "upstream" not in table:
        raise ConfigError(
            f"Invalid [[route]] in {path}: both prefix = \"/auth\" and "
            "upstream = \"http://HOST:PORT\" are required."
        )
    prefix = _expect(table, "prefix", str, "route.")
    if not prefix.startswith("/") or prefix.startswith("/v2"):
        raise ConfigError(
            f"Invalid route prefix {prefix!r}: it must start with '/' and must not "
            "take over the registry API under /v2/."
        )
    return Route(prefix=prefix, upstream=parse_upstream(table["upstream"], "route.upstream"))


def parse_log_level(value: str) -> str:
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"Invalid log_level {value!r}: use one of {', '.join(LOG_LEVELS)}."
        )
    return level


def parse_event_loop(value: str) -> str:
    choice = value.strip().lower()
    if choice not in EVENT_LOOPS:
        raise ConfigError(
            f"Invalid event_loop {value!r}: use one of {', '.join(EVENT_LOOPS)}."
        )
    return choice


def parse_workers(value: int | str) -> int:
    """Parse `workers`: a count from 1 to MAX_WORKERS, or "auto" for one per CPU."""
    if value == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    if isinstance(value, int) and 1 <= value <= MAX_WORKERS:
        return value
    raise ConfigError(
        f"Invalid value for workers: {value!r}; give a number of processes from 1 to "
        f"{MAX_WORKERS}, or \"auto\" for one per CPU."
    )


def validate(config: Config) -> None:
    """Check the combination of values, after command-line overrides."""
    if (config.cert is None) != (config.key is None):
        raise ConfigError(
            "A certificate needs its key: give both --cert FILE and --key FILE "
            "(tls.cert and tls.key), or neither to use a generated certificate."
        )
    if config.metrics_listen is not None:
        _validate_metrics_listen(config)
    upstream_origin = (config.upstream.host, config.upstream.port)
    for listener in config.listen:
        if (listener.host, listener.port) == upstream_origin:
            raise ConfigError(
                f"The listen address {listener} is the upstream's own address: "
                "the gateway would forward to itself. Give the registry's address "
                "with --upstream."
            )


def _validate_metrics_listen(config: Config) -> None:
    metrics = config.metrics_listen
    assert metrics is not None
    for listener in config.listen:
        if metrics.port != 0 and (listener.host, listener.port) == (metrics.host, metrics.port):
            raise ConfigError(
                f"metrics_listen {metrics} is also a listen address: give the metrics "
                "their own port, for example \"127.0.0.1:9464\"."
            )
