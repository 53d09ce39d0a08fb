"""`probe --local`, other clients: containerd's CRI config and podman's registries.conf.

containerd's CRI plugin reads registry settings from config.toml (`version = 2`:
`plugins."io.containerd.grpc.v1.cri".registry`; `version = 3`, containerd 2.x:
`plugins."io.containerd.cri.v1.images".registry`), and only kubelet and crictl use
them: `ctr` reads neither that file nor docker's daemon.json. A mirror key must
equal the image's registry host including the port. podman and skopeo read
registries.conf in the v2 format; containers/image rejects a file that mixes v1
tables with v2 `[[registry]]` blocks.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from gateway import probe
from gateway.probe_local import LocalAudit

CONTAINERD_CONFIG = Path("/etc/containerd/config.toml")
REGISTRIES_CONF = Path("/etc/containers/registries.conf")
CRI_PLUGINS = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.images"}
V1_TABLES = ("search", "insecure", "block")


def _load_toml(result: LocalAudit, path: Path) -> dict | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        result.add("Error", f"Cannot read {str(path)!r}: {exc.strerror}.")
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        result.add("Error", f"{str(path)!r} is not valid TOML: {exc}.")
        return None


def check_containerd(
    result: LocalAudit, target: probe.Target, path: Path | None
) -> None:
    """Flag a missing config.toml, CRI mirror keys without the port and a missing config_path."""
    path = path or CONTAINERD_CONFIG
    if not path.exists():
        _note_missing_config(result, path)
        _note_ctr(result)
        return

    config = _load_toml(result, path)
    if config is None:
        return
    version = int(config.get("version", 1))
    plugin = CRI_PLUGINS.get(version, CRI_PLUGINS[2])
    section = _registry_section(version)
    registry = config.get("plugins", {}).get(plugin, {}).get("registry", {})
    reference = target.reference
    for key in registry.get("mirrors", {}):
        if key.lower() == target.host.lower() and target.port_given:
            result.add(
                "Warning",
                f"The containerd mirror key {key!r} in {str(path)!r} does not match "
                f"{reference!r}: the key must equal the image's registry host "
                "including the port. Restart containerd after the edit.",
            )
    config_path = registry.get("config_path", "")
    if not config_path:
        result.add(
            "Note",
            f"{str(path)!r} sets no config_path in [{section}], so the CRI plugin reads "
            f'no hosts.toml; set config_path = "/etc/containerd/certs.d" there and '
            "restart containerd.",
        )
    else:
        hosts_toml = Path(config_path) / reference / "hosts.toml"
        state = "exists" if hosts_toml.is_file() else "does not exist"
        result.add("Note", f"containerd reads {str(hosts_toml)!r}, which {state}.")
    _note_ctr(result)


def _note_missing_config(result: LocalAudit, path: Path) -> None:
    result.add(
        "Note",
        f"The containerd config {str(path)!r} does not exist, so containerd runs "
        "with its built-in defaults, in which the CRI plugin of containerd 1.x "
        "reads no hosts.toml. To make it read them, create the file with version = 2 "
        f'and config_path = "/etc/containerd/certs.d" in [{_registry_section(2)}], '
        "then restart containerd.",
    )


def _registry_section(version: int) -> str:
    return f'plugins."{CRI_PLUGINS.get(version, CRI_PLUGINS[2])}".registry'


def _note_ctr(result: LocalAudit) -> None:
    result.add(
        "Note",
        "docker's daemon.json does not affect kubelet or crictl pulls, and ctr reads "
        "neither file: ctr needs --hosts-dir DIR or --plain-http.",
    )


def default_registries_conf() -> Path:
    return Path(os.environ.get("CONTAINERS_REGISTRIES_CONF") or REGISTRIES_CONF)


def check_registries_conf(
    result: LocalAudit, target: probe.Target, path: Path | None
) -> None:
    """Flag v1 tables (alone or mixed with v2) and report an insecure v2 entry."""
    path = path or default_registries_conf()
    config = _load_toml(result, path)
    if config is None:
        return
    v1 = config.get("registries")
    has_v1 = isinstance(v1, dict) and any(table in v1 for table in V1_TABLES)
    has_v2 = "registry" in config or "unqualified-search-registries" in config
    if has_v1 and has_v2:
        result.add(
            "Error",
            f"{str(path)!r} mixes v1 tables ([registries.insecure] and the like) with "
            'v2 [[registry]] blocks, so podman fails with "mixing sysregistry v1/v2 '
            f'is not supported". Replace the v1 tables with a [[registry]] block: '
            f'location = "{target.reference}", insecure = true.',
        )
    elif has_v1:
        result.add(
            "Warning",
            f"{str(path)!r} uses the v1 format, which newer podman rejects with "
            '"registries.conf must be in v2 format but is in v1". Convert it: the '
            "search list becomes unqualified-search-registries and each insecure host "
            "a [[registry]] block with insecure = true.",
        )
    for entry in config.get("registry", []):
        if entry.get("location") == target.reference and entry.get("insecure"):
            result.add(
                "Note",
                f"{str(path)!r} marks {target.reference} insecure for podman and skopeo.",
            )
