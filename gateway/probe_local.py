"""`probe --local HOST[:PORT]`: audit this client machine's Docker config for one registry.

Reads daemon.json, the certs.d folder and the hosts file, reports whether dockerd
treats the registry as insecure and flags the mistakes that silently break it.
The matching rules follow moby's `loadInsecureRegistries` and `isSecureIndex`
as dockerd 20.10.24 behaves here: an exact, case-sensitive `host[:port]` match,
then a CIDR match on the resolved addresses, with 127.0.0.0/8 always added.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gateway import probe, probe_net

INSECURE_KEY = "insecure-registries"
# A few daemon.json keys users confuse with the right one.
NEAR_MISS_KEYS = (
    "insecure-registry",
    "insecure_registries",
    "insecureRegistries",
    "insecure-registeries",
    "insecure-registers",
)
IMPLICIT_CIDR = "127.0.0.0/8"
# Ubuntu and Debian's old init scripts read DOCKER_OPTS from here; the systemd
# unit shipped with docker does not.
DOCKER_ENV_FILE = Path("/etc/default/docker")
DOCKER_INFO_TIMEOUT = 5.0


@dataclass
class LocalAudit:
    """The outcome of this machine's Docker config for one registry, with each finding."""

    target: str
    daemon_json: str
    certs_dir: str
    hosts_file: str
    insecure: bool = False
    insecure_reason: str = ""
    entries: list[str] = field(default_factory=list)
    hosts_addresses: list[str] = field(default_factory=list)
    ca_files: list[str] = field(default_factory=list)
    daemon_json_valid: bool = True
    # Why dockerd does not start with daemon.json, such as "not valid JSON:
    # Expecting value at line 1, column 35"; empty when the file is usable.
    daemon_json_error: str = ""
    effective_insecure: bool | None = None
    findings: list[probe.Finding] = field(default_factory=list)

    def add(self, level: str, text: str) -> None:
        self.findings.append(probe.Finding(level, text))

    @property
    def ok(self) -> bool:
        return not any(f.level == "Error" for f in self.findings)

    def to_json(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def default_daemon_json() -> Path:
    """Return where dockerd reads daemon.json on this platform (moby daemon/command defaults)."""
    if sys.platform == "win32":  # pragma: no cover - the tests run on Linux
        return (
            Path(os.environ.get("ProgramData", r"C:\ProgramData"))
            / "docker"
            / "config"
            / "daemon.json"
        )
    if os.geteuid() != 0:
        config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(config_home) / "docker" / "daemon.json"
    return Path("/etc/docker/daemon.json")


@dataclass
class AuditPaths:
    """The files the audit reads; None means this platform's default."""

    daemon_json: Path | None = None
    certs_dir: Path | None = None
    hosts_file: Path | None = None
    docker_env_file: Path = DOCKER_ENV_FILE
    containerd_config: Path | None = None
    registries_conf: Path | None = None
    docker_bin: str | None = None


def audit(target: probe.Target, paths: AuditPaths | None = None) -> LocalAudit:
    """Run every local check for `target` and return the audit."""
    from gateway import probe_local_clients

    paths = paths or AuditPaths()
    daemon_json = paths.daemon_json or default_daemon_json()
    certs_dir = paths.certs_dir or Path("/etc/docker/certs.d")
    hosts_file = paths.hosts_file or probe_net.HOSTS_FILE
    result = LocalAudit(
        target.reference, str(daemon_json), str(certs_dir), str(hosts_file)
    )
    check_hosts(result, target, hosts_file)
    entries = read_daemon_json(result, daemon_json)
    result.entries = entries
    match_insecure(result, target, entries)
    check_env_file(result, target, paths.docker_env_file)
    check_docker_info(result, target, paths.docker_bin)
    check_certs_dir(result, target, certs_dir)
    probe_local_clients.check_containerd(result, target, paths.containerd_config)
    probe_local_clients.check_registries_conf(result, target, paths.registries_conf)
    return result


def check_hosts(result: LocalAudit, target: probe.Target, hosts_file: Path) -> None:
    if probe.is_ip(target.host):
        return
    result.hosts_addresses = probe_net.hosts_file_addresses(target.host, hosts_file)
    if result.hosts_addresses:
        result.add(
            "Note",
            f"The hosts file {str(hosts_file)!r} maps {target.host} to {', '.join(result.hosts_addresses)}; dockerd resolves the name the same way only if it reads the same file.",
        )


def read_daemon_json(result: LocalAudit, path: Path) -> list[str]:
    """Parse daemon.json and return its insecure-registries entries, flagging every mistake."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        result.add(
            "Note",
            f"There is no {str(path)!r}, so dockerd uses its defaults: only {IMPLICIT_CIDR} is insecure.",
        )
        return []
    except OSError as exc:
        result.add("Error", f"Cannot read {str(path)!r}: {exc.strerror}.")
        return []
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        result.daemon_json_valid = False
        result.daemon_json_error = (
            f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        )
        result.add(
            "Error",
            f"{str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}; dockerd does not start with it. Fix the file, then check it with `dockerd --validate --config-file {path}`.",
        )
        return []
    if not isinstance(config, dict):
        result.daemon_json_error = (
            f"a JSON {type(config).__name__}, not the one JSON object dockerd expects"
        )
        result.add(
            "Error",
            f"{str(path)!r} must contain one JSON object, not {type(config).__name__}; dockerd does not start with it.",
        )
        return []

    for key in config:
        if key != INSECURE_KEY and (
            key in NEAR_MISS_KEYS
            or difflib.get_close_matches(key, [INSECURE_KEY], n=1, cutoff=0.85)
        ):
            result.add(
                "Error",
                f'{str(path)!r} has the key {key!r}, which dockerd does not read as {INSECURE_KEY!r}: rename it to "{INSECURE_KEY}" (plural, a JSON list) and restart dockerd.',
            )
    value = config.get(INSECURE_KEY, [])
    if isinstance(value, str):
        result.add(
            "Error",
            f'{INSECURE_KEY} in {str(path)!r} is the string {value!r}, not a list; dockerd does not start. Write "{INSECURE_KEY}": [{json.dumps(value.strip())}].',
        )
        return []
    if not isinstance(value, list):
        result.add(
            "Error",
            f"{INSECURE_KEY} in {str(path)!r} must be a JSON list of strings; dockerd does not start.",
        )
        return []
    return [str(entry) for entry in value]


def normalise_entry(result: LocalAudit, entry: str) -> str | None:
    """Return the entry as dockerd stores it, or None when dockerd rejects it."""
    value = entry
    if value != value.strip():
        result.add(
            "Warning",
            f"The entry {entry!r} has spaces around it, which dockerd does not trim; write {value.strip()!r}.",
        )
        value = value.strip()
    for scheme in ("http://", "https://"):
        if value.lower().startswith(scheme):
            result.add(
                "Warning",
                f"The entry {entry!r} contains {scheme!r}; dockerd strips it with a warning. Write {value[len(scheme) :]!r}.",
            )
            value = value[len(scheme) :]
    if "://" in value:
        result.add(
            "Error",
            f"The entry {entry!r} has a scheme dockerd rejects; write only host:port.",
        )
        return None
    if "/" in value and not _is_cidr(value):
        result.add(
            "Error",
            f"The entry {entry!r} contains a path or a trailing '/', so dockerd does not start; write {value.split('/', 1)[0]!r}.",
        )
        return None
    if "*" in value:
        result.add(
            "Error",
            f"The entry {entry!r} is a wildcard, which dockerd rejects at start-up; list each host:port, or a CIDR.",
        )
        return None
    return value


def _is_cidr(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return "/" in value


def resolved_addresses(target: probe.Target) -> list[str]:
    if probe.is_ip(target.host):
        return [target.host]
    try:
        return sorted(
            {
                info[4][0]
                for info in socket.getaddrinfo(
                    target.host, None, type=socket.SOCK_STREAM
                )
            }
        )
    except socket.gaierror:
        return []


def match_insecure(
    result: LocalAudit, target: probe.Target, entries: list[str]
) -> None:
    """Decide whether dockerd treats the target as insecure and explain near misses."""
    reference = target.reference
    addresses = resolved_addresses(target)
    cidrs = []
    for entry in entries:
        value = normalise_entry(result, entry)
        if value is None:
            continue
        if _is_cidr(value):
            cidrs.append(value)
            continue
        if value == reference:
            result.insecure, result.insecure_reason = (
                True,
                f"the entry {value!r} matches exactly",
            )
            continue
        _near_miss(result, target, value)
    if result.insecure:
        return
    for cidr in cidrs + [IMPLICIT_CIDR]:
        network = ipaddress.ip_network(cidr, strict=False)
        inside = [a for a in addresses if ipaddress.ip_address(a) in network]
        if inside:
            implicit = (
                ", which dockerd adds to every configuration"
                if cidr == IMPLICIT_CIDR
                else ""
            )
            result.insecure, result.insecure_reason = (
                True,
                f"{', '.join(inside)} lies in {cidr}{implicit}",
            )
            return
    if result.daemon_json_error:
        return  # dockerd does not start with this daemon.json, so it treats nothing.
    result.add(
        "Note",
        f"This dockerd treats {reference} as secure: verified HTTPS only. To allow plain HTTP, run `registry-gateway snippet docker {reference} --insecure` and restart dockerd (or send it SIGHUP).",
    )


def _near_miss(result: LocalAudit, target: probe.Target, value: str) -> None:
    reference = target.reference
    host, _, port = (
        value.rpartition(":") if re.search(r":\d+$", value) else (value, "", "")
    )
    if value.lower() == reference.lower():
        result.add(
            "Warning",
            f"The entry {value!r} differs from {reference!r} only in case; dockerd matches case-sensitively, so write {reference!r}.",
        )
    elif host.lower() == target.host.lower() and port and target.port_given:
        result.add(
            "Warning",
            f"The entry {value!r} has port {port}, but the image reference uses {reference!r}; the ports must match.",
        )
    elif value.lower() == target.host.lower() and target.port_given:
        result.add(
            "Warning",
            f"The entry {value!r} has no port, so it does not cover {reference!r}; write {reference!r}.",
        )


def check_certs_dir(result: LocalAudit, target: probe.Target, root: Path) -> None:
    """Check certs.d/HOST:PORT and the folder names users get wrong."""
    folder = root / target.reference
    if folder.is_dir():
        files = sorted(p.name for p in folder.iterdir())
        result.ca_files = [
            str(folder / name) for name in files if name.endswith(".crt")
        ]
        for name in files:
            if name.endswith((".pem", ".cer", ".cert")) and not (
                name.endswith(".cert") and (folder / (name[:-5] + ".key")).exists()
            ):
                result.add(
                    "Warning",
                    f"{str(folder / name)!r} is not read as a CA: docker reads only *.crt files. Rename it to {str(folder / 'ca.crt')!r}.",
                )
            if name.endswith(".key") and not (folder / (name[:-4] + ".cert")).exists():
                result.add(
                    "Error",
                    f'The key {str(folder / name)!r} has no {name[:-4] + ".cert"!r} beside it; docker fails with "missing client certificate".',
                )
        if result.ca_files and result.insecure:
            result.add(
                "Note",
                f"dockerd does not load {str(folder)!r} for an insecure registry: it skips certificate checks altogether.",
            )
    for near in (root / target.host, root / f"{target.host}{target.port}"):
        if target.port_given and near != folder and near.is_dir():
            kind = (
                "without the port"
                if near.name == target.host
                else "without the colon (the Windows form)"
            )
            result.add(
                "Warning",
                f"The folder {str(near)!r} is named {kind}; docker on Linux reads only {str(folder)!r}.",
            )
    if not result.ca_files and not result.insecure:
        result.add(
            "Note",
            f"No CA for {target.reference} in {str(folder)!r}; docker trusts only the system store for it.",
        )


def check_env_file(result: LocalAudit, target: probe.Target, path: Path) -> None:
    """Flag an --insecure-registry flag in the old init scripts' DOCKER_OPTS file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        if line.lstrip().startswith("#") or "insecure-registry" not in line:
            continue
        result.add(
            "Warning",
            f"{str(path)!r} sets {line.strip()!r}, but dockerd under systemd does not "
            "read that file. Put the entry in daemon.json instead: "
            f"registry-gateway snippet docker {target.reference} --insecure",
        )


def registry_config(docker_bin: str | None) -> dict | None:
    """Return `docker info`'s RegistryConfig, or None when no daemon answers."""
    binary = docker_bin or shutil.which("docker")
    if binary is None:
        return None
    try:
        completed = subprocess.run(
            [binary, "info", "--format", "{{json .RegistryConfig}}"],
            capture_output=True,
            text=True,
            timeout=DOCKER_INFO_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if completed.returncode != 0:
        return None
    try:
        return json.loads(completed.stdout)
    except json.JSONDecodeError:
        return None


def check_docker_info(
    result: LocalAudit, target: probe.Target, docker_bin: str | None
) -> None:
    """Compare daemon.json with what the running dockerd reports in `docker info`."""
    config = registry_config(docker_bin)
    if config is None:
        if not result.daemon_json_valid:
            result.add(
                "Note",
                "No dockerd answers `docker info`, and daemon.json does not parse: "
                "that is why dockerd is not running.",
            )
        return
    reference = target.reference
    index = (config.get("IndexConfigs") or {}).get(reference) or {}
    effective = index.get("Secure") is False
    if not effective:
        addresses = resolved_addresses(target)
        for cidr in config.get("InsecureRegistryCIDRs") or []:
            network = ipaddress.ip_network(cidr, strict=False)
            if any(ipaddress.ip_address(a) in network for a in addresses):
                effective = True
    result.effective_insecure = effective
    if effective == result.insecure:
        return
    if result.insecure:
        result.add(
            "Warning",
            f"daemon.json makes {reference} insecure, but the running dockerd does not "
            "list it in `docker info`: restart dockerd or send it SIGHUP "
            "(`kill -HUP $(pidof dockerd)`) to load the file.",
        )
    else:
        result.add(
            "Note",
            f"The running dockerd treats {reference} as insecure although daemon.json "
            "does not: it was started with other flags or another --config-file.",
        )


def render(result: LocalAudit) -> str:
    """Format the audit for people: the insecure decision, the files read, findings."""
    if result.insecure:
        state = f"insecure ({result.insecure_reason})"
    else:
        state = "secure (verified HTTPS only)"
    running = {
        None: "no dockerd answered `docker info`",
        True: "insecure",
        False: "secure",
    }
    entries = result.entries or "[]"
    headline = f"{result.target}: the docker configuration makes it {state}."
    if result.daemon_json_error:
        headline = (
            f"{result.target}: dockerd will not start with {result.daemon_json!r}, "
            f"because the file is {result.daemon_json_error}."
        )
    lines = [
        headline,
        f"  running dockerd  {running[result.effective_insecure]}",
        f"  daemon.json      {result.daemon_json}; insecure-registries: {entries}",
        f"  certs.d          {result.certs_dir}; CA files: "
        + (", ".join(result.ca_files) or "none"),
        f"  hosts file       {result.hosts_file}; entries: "
        + (", ".join(result.hosts_addresses) or "none"),
    ]
    lines += [f"{f.level}: {f.text}" for f in result.findings]
    return "\n".join(lines)
