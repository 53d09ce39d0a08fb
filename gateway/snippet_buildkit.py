"""BuildKit: `[registry."host:port"]` in buildkitd.toml, and the buildx builder that reads it.

BuildKit's resolver config (godoc `util/resolver/config.RegistryConfig`) takes
`http = true` for a plain-HTTP registry and `ca = [...]` for extra CA files.
buildkitd reads the file at start-up, so a buildx builder must be created
(or recreated) with `--buildkitd-config`; buildx copies the referenced CA
files into the builder container. The default `docker` driver ignores this
file and uses dockerd's settings instead.
"""

from __future__ import annotations

import tomlkit

from gateway import snippet_toml
from gateway.client_paths import client_paths
from gateway.snippets import (
    OutputFile,
    Request,
    Result,
    SourceFile,
    ca_output,
    default_merge_path,
    read_source,
)

BUILDER = "registry-gateway"


def build(request: Request) -> Result:
    result = Result()
    registry = request.registry
    default = client_paths("buildkit", request.platform).config_path()
    merge_path = default_merge_path(request, default, "buildkitd.toml")
    target = merge_path or default
    ca_file = None
    if request.ca is not None:
        ca_output(request.ca, request.ca)  # validates that the file is a PEM CA
        ca_file = str(request.ca.resolve())

    source = read_source(merge_path) if merge_path else SourceFile(target, "", b"", False)
    if source.text.strip():
        content = _merge(source, registry.name, ca_file, result)
    else:
        content = buildkitd_toml(registry.name, ca_file)

    result.files.append(
        OutputFile(
            path=str(target),
            content=content,
            target=target if request.write else None,
            original=source.text if source.exists else None,
        )
    )
    _steps(request, result, target)
    return result


def buildkitd_toml(name: str, ca_file: str | None) -> str:
    """Return a new buildkitd.toml with one registry table."""
    key = tomlkit.string(name).as_string()
    if ca_file is None:
        body = "  http = true\n"
    else:
        body = f"  ca = [{tomlkit.string(ca_file).as_string()}]\n"
    return f"[registry.{key}]\n{body}"


def _merge(source: SourceFile, name: str, ca_file: str | None, result: Result) -> str:
    document = snippet_toml.parse(source, "buildkitd")
    registries = document.get("registry")
    if registries is None:
        registries = tomlkit.table(is_super_table=True)
        document["registry"] = registries
    elif not isinstance(registries, dict):
        raise snippet_toml.type_error(source, "registry", "a table", f'[registry."{name}"]')

    entry = registries.get(name)
    if entry is None:
        entry = tomlkit.table()
        registries[name] = entry
    elif not isinstance(entry, dict):
        raise snippet_toml.type_error(source, name, "a table", f'[registry."{name}"]')

    if ca_file is None:
        entry["http"] = True
        return snippet_toml.dumps(document, source.text)

    cas = entry.get("ca")
    if cas is None:
        entry["ca"] = [ca_file]
    elif not isinstance(cas, list):
        raise snippet_toml.type_error(source, "ca", "a list of paths", f'ca = ["{ca_file}"]')
    elif ca_file not in cas:
        cas.append(ca_file)
    if entry.get("http") is True:
        result.warn(
            f"{source.path}: [registry.\"{name}\"] also has http = true, so BuildKit "
            "keeps using plain HTTP and never reads the CA: remove that line."
        )
    return snippet_toml.dumps(document, source.text)


def _steps(request: Request, result: Result, target) -> None:
    registry = request.registry
    result.commands.append(
        f"docker buildx create --name {BUILDER} --driver docker-container "
        f"--buildkitd-config {target} --use"
    )
    result.note(
        "buildkitd reads this file only when the builder is created: remove an "
        f"existing one first with docker buildx rm {BUILDER} (older buildx releases "
        "name the option --config). The default docker driver ignores the file and "
        "uses dockerd's settings."
    )
    if request.ca is not None:
        result.note(
            "buildx copies the CA file into the builder container, so the path only "
            "has to exist where docker buildx create runs."
        )
    else:
        result.warn(
            f"http = true makes BuildKit push to and pull from {registry.name} in "
            "plain HTTP, so anyone on the network path can read or change images: "
            "prefer the gateway with --ca."
        )
