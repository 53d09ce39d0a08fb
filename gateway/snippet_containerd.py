"""containerd: `certs.d/HOST:PORT/hosts.toml`, and the `config_path` that makes CRI read it.

containerd 1.5 and later read per-registry files from the hosts directory
(containerd `docs/hosts.md`): `server` is the registry's URL, each
`[host."URL"]` table lists `capabilities` and TLS settings (`ca`,
`skip_verify`). The folder name is `host:port` as in the image reference,
which every containerd release reads on Linux. Edits under the hosts
directory need no restart; a `config_path` change does. `ctr` does not read the
CRI config at all and needs `--hosts-dir`.
"""

from __future__ import annotations

from pathlib import Path

import tomlkit

from gateway import snippet_toml
from gateway.client_paths import client_paths
from gateway.snippets import (
    OutputFile,
    Registry,
    Request,
    Result,
    ca_output,
    read_source,
)

CAPABILITIES = ["pull", "resolve", "push"]
# The CRI plugin section that holds config_path, per config.toml version:
# version 2 is containerd 1.x, version 3 is containerd 2.x.
CRI_REGISTRY = {
    2: ("io.containerd.grpc.v1.cri", "containerd 1.x"),
    3: ("io.containerd.cri.v1.images", "containerd 2.x"),
}


def build(request: Request) -> Result:
    result = Result()
    registry = request.registry
    paths = client_paths("containerd", request.platform)
    certs_dir = paths.certs_path()

    config_output = None
    if request.containerd_config is not None:
        config_output, configured = _merge_config_path(request, certs_dir, result)
        if configured is not None and request.merge is None:
            certs_dir = configured
    # A hosts.toml given with --merge takes its CA beside it, where ca points.
    folder = request.merge.parent if request.merge else certs_dir / registry.name
    hosts_path = request.merge or folder / "hosts.toml"

    url = _url(registry, request.insecure)
    ca_path = None
    ca_file = None
    if request.ca is not None:
        # Absolute, because containerd joins a relative ca with the folder of
        # hosts.toml, and a relative --merge path is relative to the current folder.
        ca_path = (folder / "ca.crt").resolve()
        ca_file = ca_output(request.ca, ca_path)
        ca_file.target = ca_path if request.write else None

    source = read_source(hosts_path) if (request.merge_requested or request.write) else None
    if source is not None and source.exists and source.text.strip():
        content = _merge_hosts(source, url, ca_path, result)
        original = source.text
    else:
        content = hosts_toml(url, ca_path)
        original = source.text if source is not None and source.exists else None

    result.files.append(
        OutputFile(
            path=str(hosts_path),
            content=content,
            target=hosts_path if request.write else None,
            original=original,
        )
    )
    if ca_file is not None:
        result.files.append(ca_file)
    if config_output is not None:
        result.files.append(config_output)
    if not request.write:
        result.note(f"Save the hosts.toml above as {hosts_path}.")
    _notes(request, result, certs_dir, request.containerd_config is not None)
    return result


def _url(registry: Registry, insecure: bool) -> str:
    return f"{'http' if insecure else 'https'}://{registry.name}"


def hosts_toml(url: str, ca_path=None) -> str:
    """Return a new hosts.toml for one registry at `url`."""
    lines = [
        f"server = {_quote(url)}",
        "",
        f"[host.{_quote(url)}]",
        f"  capabilities = {_quote_list(CAPABILITIES)}",
    ]
    if ca_path is not None:
        lines.append(f"  ca = {_quote(str(ca_path))}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return tomlkit.string(text).as_string()


def _quote_list(items: list[str]) -> str:
    return "[" + ", ".join(_quote(item) for item in items) + "]"


def _merge_hosts(source, url: str, ca_path, result: Result) -> str:
    document = snippet_toml.parse(source, "containerd")
    server = document.get("server")
    if server is not None and not isinstance(server, str):
        raise snippet_toml.type_error(source, "server", "a string", f'server = "{url}"')
    if server != url:
        if server is not None:
            result.note(f"{source.path}: changed server from {server!r} to {url!r}.")
        document["server"] = url

    hosts = document.get("host")
    if hosts is None:
        hosts = tomlkit.table(is_super_table=True)
        document["host"] = hosts
    elif not isinstance(hosts, dict):
        raise snippet_toml.type_error(source, "host", "a table", f'[host."{url}"]')

    entry = hosts.get(url)
    if entry is None:
        entry = tomlkit.table()
        hosts[url] = entry
    elif not isinstance(entry, dict):
        raise snippet_toml.type_error(source, url, "a table", f'[host."{url}"]')
    if "capabilities" not in entry:
        entry["capabilities"] = CAPABILITIES
    if ca_path is not None:
        entry["ca"] = str(ca_path)
    elif any(key in entry for key in ("ca", "client", "skip_verify")):
        result.warn(
            f"{source.path}: [host.{_quote(url)}] also has TLS settings, so containerd "
            "tries HTTPS first and then HTTP: remove ca, client and skip_verify "
            "there for a plain-HTTP registry."
        )
    for other in hosts:
        if other != url and other.split("://")[-1] == url.split("://")[-1]:
            result.warn(
                f"{source.path}: [host.{_quote(other)}] is for the same registry with "
                f"another scheme, and containerd tries hosts in order before server: "
                "remove it unless it is a mirror you want first."
            )
    return snippet_toml.dumps(document, source.text)


def _merge_config_path(request: Request, certs_dir, result: Result):
    """Check config.toml's config_path; return its merged form (or None) and the hosts dir set."""
    path = request.containerd_config
    source = read_source(path)
    document = snippet_toml.parse(source, "containerd")
    version = document.get("version", 1)
    if version not in CRI_REGISTRY:
        result.warn(
            f"{path} is config version {version}: set config_path by hand in the CRI "
            "registry section, or migrate the file with containerd config migrate "
            "(containerd 2.x)."
        )
        return None, None
    plugin, release = CRI_REGISTRY[version]
    section = _table(document, ["plugins", plugin, "registry"], source)
    conflicts = _check_old_mirrors(section, request.registry, path, result)

    configured = section.get("config_path")
    if configured:
        result.note(f"{path} sets config_path = {str(configured)!r} ({release}).")
        return None, Path(str(configured))
    if conflicts:
        result.warn(
            f"{path} was not merged: its CRI plugin fails to load (\"`mirrors` cannot "
            "be set when `config_path` is provided\") if config_path is added while "
            f"{' and '.join(conflicts)} remain. Move those registries to hosts.toml "
            f'files, remove the tables, then set config_path = "{certs_dir}" in '
            f'[plugins."{plugin}".registry].'
        )
        return None, None
    section["config_path"] = str(certs_dir)
    content = snippet_toml.dumps(document, source.text)
    result.note(
        f"{path} has no config_path, so CRI ignores hosts.toml; the merged {path} "
        f"sets it ({release}). containerd must be restarted for this change."
    )
    result.commands.append("sudo systemctl restart containerd")
    return (
        OutputFile(
            path=str(path),
            content=content,
            target=path if request.write else None,
            original=source.text if source.exists else None,
        ),
        None,
    )


def _table(document, keys: list[str], source):
    current = document
    for index, key in enumerate(keys):
        child = current.get(key)
        if child is None:
            super_table = index < len(keys) - 1
            child = tomlkit.table(is_super_table=super_table)
            current[key] = child
        elif not isinstance(child, dict):
            raise snippet_toml.type_error(source, key, "a table", f"[{'.'.join(keys[: index + 1])}]")
        current = child
    return current


def _check_old_mirrors(section, registry: Registry, path, result: Result) -> list[str]:
    """Warn about the deprecated registry tables; return those that block config_path."""
    conflicts = []
    configs = section.get("configs")
    if isinstance(configs, dict) and any(
        isinstance(value, dict) and "tls" in value for value in configs.values()
    ):
        conflicts.append("registry.configs TLS settings")
    mirrors = section.get("mirrors")
    if not isinstance(mirrors, dict) or not mirrors:
        return conflicts
    conflicts.insert(0, "registry.mirrors")
    for key in mirrors:
        if key != registry.name and key == registry.host:
            result.warn(
                f"{path}: the mirror key {key!r} has no port, so it never applied to "
                f"images named {registry.name}/...: the key must be the exact host:port."
            )
    return conflicts


def _notes(request: Request, result: Result, certs_dir, checked_config: bool) -> None:
    registry = request.registry
    if not checked_config:
        grpc, cri = CRI_REGISTRY[2][0], CRI_REGISTRY[3][0]
        result.note(
            f"CRI clients (kubelet, crictl) read hosts.toml only when config_path is set "
            f"in /etc/containerd/config.toml: for containerd 1.x (version = 2), "
            f'[plugins."{grpc}".registry] config_path = "{certs_dir}"; for containerd '
            f'2.x (version = 3), [plugins."{cri}".registry] config_path = "{certs_dir}". '
            "A config_path change needs sudo systemctl restart containerd; give the file "
            "with --containerd-config to check or merge it."
        )
    result.note(
        f"containerd reads hosts.toml changes without a restart. ctr ignores the CRI "
        f"config: use ctr images pull --hosts-dir {certs_dir} {registry.name}/IMAGE."
    )
    result.note("docker's daemon.json plays no part in kubelet or ctr pulls.")
    if request.insecure:
        result.warn(
            f"This hosts.toml sends plain HTTP to {registry.name}, so anyone on the "
            "network path can read or change images: for a TLS registry use --ca instead."
        )
    if registry.port is None:
        result.warn(
            f"{registry.name!r} has no port, so the URL uses port "
            f"{'80' if request.insecure else '443'}: give HOST:PORT when the registry "
            "listens elsewhere."
        )
