"""Where each client keeps its registry configuration, per platform.

One table for the snippet commands, the probe's local audit and CA trust
installation. Paths that start with `~` are expanded at use time, so the table
itself stays the same for every user. Sources: Docker's daemon documentation
(daemon.json and certs.d per platform), containerd `docs/hosts.md`,
containers-registries.conf(5) and containers-certs.d(5), the k3s private
registry documentation and BuildKit's `buildkitd.toml` documentation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError

CLIENTS = ("docker", "containerd", "podman", "k3s", "buildkit")
PLATFORMS = ("linux", "windows", "desktop", "rootless")


@dataclass(frozen=True)
class ClientPaths:
    """The files one client reads on one platform.

    `config` is the file a snippet merges into; it is None where the client
    keeps its settings behind a user interface (Docker Desktop), and
    `config_location` then names where to paste them. `certs_dir` is the root of
    the per-registry CA folders, or None where the client has none.
    """

    config: str | None
    certs_dir: str | None
    config_location: str

    def config_path(self) -> Path | None:
        return Path(os.path.expanduser(self.config)) if self.config else None

    def certs_path(self) -> Path | None:
        return Path(os.path.expanduser(self.certs_dir)) if self.certs_dir else None


_DOCKER_DESKTOP = (
    "Docker Desktop's Settings > Docker Engine (the daemon.json editor), "
    "then Apply & Restart"
)

PATHS: dict[tuple[str, str], ClientPaths] = {
    ("docker", "linux"): ClientPaths(
        "/etc/docker/daemon.json", "/etc/docker/certs.d", "/etc/docker/daemon.json"
    ),
    ("docker", "rootless"): ClientPaths(
        "~/.config/docker/daemon.json",
        "~/.config/docker/certs.d",
        "~/.config/docker/daemon.json",
    ),
    ("docker", "windows"): ClientPaths(
        r"C:\ProgramData\docker\config\daemon.json",
        r"C:\ProgramData\docker\certs.d",
        r"C:\ProgramData\docker\config\daemon.json",
    ),
    # Desktop runs dockerd in a VM: CA trust comes from the host's trust store,
    # and only client key pairs go to ~/.docker/certs.d on the host.
    ("docker", "desktop"): ClientPaths(None, None, _DOCKER_DESKTOP),
    ("containerd", "linux"): ClientPaths(
        "/etc/containerd/config.toml",
        "/etc/containerd/certs.d",
        "/etc/containerd/config.toml",
    ),
    ("containerd", "rootless"): ClientPaths(
        "~/.config/containerd/config.toml",
        "~/.config/containerd/certs.d",
        "~/.config/containerd/config.toml",
    ),
    ("podman", "linux"): ClientPaths(
        "/etc/containers/registries.conf",
        "/etc/containers/certs.d",
        "/etc/containers/registries.conf",
    ),
    ("podman", "rootless"): ClientPaths(
        "~/.config/containers/registries.conf",
        "~/.config/containers/certs.d",
        "~/.config/containers/registries.conf",
    ),
    # Podman Machine on macOS and Windows reads the Linux paths inside its VM.
    ("podman", "desktop"): ClientPaths(
        "/etc/containers/registries.conf",
        "/etc/containers/certs.d",
        "/etc/containers/registries.conf inside the Podman Machine VM "
        "(podman machine ssh)",
    ),
    ("k3s", "linux"): ClientPaths(
        "/etc/rancher/k3s/registries.yaml", None, "/etc/rancher/k3s/registries.yaml"
    ),
    ("buildkit", "linux"): ClientPaths(
        "/etc/buildkit/buildkitd.toml", None, "/etc/buildkit/buildkitd.toml"
    ),
    ("buildkit", "rootless"): ClientPaths(
        "~/.config/buildkit/buildkitd.toml", None, "~/.config/buildkit/buildkitd.toml"
    ),
}
PATHS[("podman", "windows")] = PATHS[("podman", "desktop")]


def client_paths(client: str, platform: str) -> ClientPaths:
    """Return the paths of `client` on `platform`, or raise for a pair with no table entry."""
    try:
        return PATHS[(client, platform)]
    except KeyError:
        known = ", ".join(p for c, p in PATHS if c == client)
        raise GatewayError(
            f"The snippet for {client} has no file locations for --platform "
            f"{platform!r}: use --platform with one of {known}."
        ) from None


def registry_folder_name(registry: str, platform: str) -> str:
    """Return the certs.d folder name for `registry` (host[:port]) on `platform`.

    Docker on Windows removes the colon (moby `hostCertsDir` replaces ":" with
    ""), so `registry.example:5000` becomes `registry.example5000` there.
    """
    if platform == "windows":
        return registry.replace(":", "")
    return registry


def folder_beside(merged: Path | None, platform_file: Path | None) -> Path | None:
    """Return the folder that takes the files written beside `--merge FILE`.

    The CA and certs.d folders go into FILE's folder, so --write on a copy never
    changes the client's live folders. None means the platform's own folders:
    no FILE was given (no --merge, or --merge without a value), or FILE is in
    the folder of the platform's own file.
    """
    if merged is None:
        return None
    folder = merged.absolute().parent
    # Every table path is absolute once expanded, so a relative one is another
    # system's path (C:\ProgramData\... read on Linux) and never names FILE's folder.
    if platform_file is None or not platform_file.is_absolute():
        return folder
    return None if _same_folder(folder, platform_file.parent) else folder


def _same_folder(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        # samefile raises when a folder is missing, so then the names are compared.
        return os.path.normpath(first) == os.path.normpath(second)
