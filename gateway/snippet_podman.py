"""podman, buildah and skopeo: a registries.conf.d drop-in in the v2 format, or a certs.d CA.

containers/image reads `registries.conf` and then every `*.conf` in
`registries.conf.d/` in name order (containers-registries.conf.d(5)). v2
files list `[[registry]]` tables with `location` and `insecure = true`, which
allows plain HTTP and unverified TLS. The v1 tables (`[registries.search]`,
`[registries.insecure]`, `[registries.block]`) are obsolete: podman 4 rejects
a file that mixes them with v2 keys ("mixing sysregistry v1/v2 is not
supported"), and newer releases reject v1 outright ("registries.conf must be
in v2 format but is in v1"). So this module writes v2 only, and converts a v1
file whole when it is the file being merged.
"""

from __future__ import annotations

from pathlib import Path

import tomlkit

from gateway import snippet_toml
from gateway.client_paths import client_paths, folder_beside
from gateway.errors import GatewayError
from gateway.snippets import OutputFile, Request, Result, ca_output, read_source

DROP_IN = "50-registry-gateway.conf"
V2_KEYS = ("registry", "unqualified-search-registries", "short-name-mode", "aliases")


def build(request: Request) -> Result:
    result = Result()
    paths = client_paths("podman", request.platform)
    main_file = paths.config_path()
    drop_in = main_file.parent / "registries.conf.d" / DROP_IN
    if request.platform in ("windows", "desktop") and request.write and request.merge is None:
        raise GatewayError(
            "Podman Machine reads its registry files inside the VM, not on this host: "
            "run the command inside it (podman machine ssh), or leave out --write."
        )

    if request.ca is not None:
        _build_ca(request, result, paths)
    else:
        target = request.merge or drop_in
        merging = request.merge_requested or request.write
        _build_insecure(request, result, target, merging)
        main = _main_file_of(target, main_file)
        if main is not None and main != target:
            _check_main_file(main, request, result)

    result.note(
        "podman, buildah and skopeo read these files on every command: nothing to "
        "restart. On Podman Machine (macOS, Windows) the files live inside the VM: "
        "edit them after podman machine ssh."
    )
    return result


def _main_file_of(target: Path, default: Path) -> Path | None:
    """Return the registries.conf that goes with a drop-in folder, if the target is in one."""
    if target.parent.name == "registries.conf.d":
        return target.parent.parent / "registries.conf"
    return default if target.parent == default.parent / "registries.conf.d" else None


def _build_insecure(request: Request, result: Result, target: Path, merging: bool) -> None:
    location = request.registry.name
    source = read_source(target) if merging else None
    if source is not None and source.exists:
        document = snippet_toml.parse(source, "podman")
        original = source.text
    else:
        document = tomlkit.document()
        original = None
        if source is None:
            result.note(
                f"Save this as {target}: a drop-in leaves registries.conf itself alone."
            )

    converted = _convert_v1(document, source, result) if original is not None else False
    if converted and request.write and not request.convert:
        raise GatewayError(
            f"{target} uses the v1 format, so writing the merge replaces the whole "
            "file with its v2 form, and it was left unchanged: check the output of "
            "the same command without --write, then add --convert to write it."
        )
    _add_registry(document, location, source, result)

    result.files.append(
        OutputFile(
            path=str(target),
            content=snippet_toml.dumps(document, original or ""),
            target=target if request.write else None,
            original=original,
        )
    )
    result.warn(
        f"insecure = true lets podman skip certificate checks for {location} and fall "
        "back to plain HTTP, so anyone on the network path can read or change "
        "images: prefer the gateway with --ca."
    )
    if request.registry.port is None:
        result.warn(
            f"{location!r} has no port, so it matches only image references written "
            "without one: give HOST:PORT when the registry listens on another port."
        )


def _v1_tables(document) -> list[str]:
    registries = document.get("registries")
    if not isinstance(registries, dict):
        return []
    return [f"[registries.{name}]" for name in ("search", "insecure", "block") if name in registries]


def _convert_v1(document, source, result: Result) -> bool:
    """Replace v1 tables in `document` with their v2 form; return whether any were there."""
    tables = _v1_tables(document)
    if not tables:
        return False
    mixed = any(key in document for key in V2_KEYS)
    error = (
        "mixing sysregistry v1/v2 is not supported"
        if mixed
        else "registries.conf must be in v2 format but is in v1"
    )
    result.warn(
        f"{source.path} uses the v1 tables {', '.join(tables)}"
        f"{' next to v2 keys' if mixed else ''}, which podman rejects (\"{error}\"): "
        "the output is the whole file converted to v2, so check it, then write it "
        "with --write --convert."
    )
    v1 = document["registries"]
    search = _hosts(v1, "search")
    insecure = _hosts(v1, "insecure")
    blocked = _hosts(v1, "block")
    del document["registries"]

    if search:
        existing = list(document.get("unqualified-search-registries", []))
        document["unqualified-search-registries"] = existing + [
            host for host in search if host not in existing
        ]
    for host in insecure:
        _set_flag(document, host, "insecure", source, result)
    for host in blocked:
        _set_flag(document, host, "blocked", source, result)
    return True


def _hosts(v1, name: str) -> list[str]:
    table = v1.get(name)
    if not isinstance(table, dict):
        return []
    return [str(host) for host in table.get("registries", [])]


def _registry_tables(document, source):
    tables = document.get("registry")
    if tables is None:
        tables = tomlkit.aot()
        document.append("registry", tables)
        return document["registry"]
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise snippet_toml.type_error(
            source, "registry", "an array of tables", '[[registry]] location = "HOST:PORT"'
        )
    return tables


def _set_flag(document, location: str, flag: str, source, result: Result) -> bool:
    """Set `flag = true` on the [[registry]] for `location`, adding one if needed."""
    tables = _registry_tables(document, source)
    for table in tables:
        if table.get("location") == location or table.get("prefix") == location:
            if table.get(flag) is True:
                return False
            table[flag] = True
            return True
    table = tomlkit.table()
    table["location"] = location
    table[flag] = True
    tables.append(table)
    return True


def _add_registry(document, location: str, source, result: Result) -> None:
    if not _set_flag(document, location, "insecure", source, result):
        result.note(f"A [[registry]] for {location} already has insecure = true.")


def _check_main_file(main: Path, request: Request, result: Result) -> None:
    try:
        source = read_source(main)
        document = snippet_toml.parse(source, "podman")
    except GatewayError as exc:
        result.warn(f"The main file could not be checked: {exc}")
        return
    tables = _v1_tables(document)
    if tables:
        result.warn(
            f"{main} uses the v1 tables {', '.join(tables)}, which podman rejects "
            "next to v2 files: convert it with registry-gateway snippet podman "
            f"{request.registry.name} --insecure --merge {main} (check the output, "
            "then add --write --convert)."
        )


def _build_ca(request: Request, result: Result, paths) -> None:
    registry = request.registry
    platform_destination = paths.certs_path() / registry.name / "ca.crt"
    beside = folder_beside(_main_file_for(request.merge), paths.config_path())
    destination = platform_destination
    if beside is not None:
        destination = beside / "certs.d" / registry.name / "ca.crt"
    output = ca_output(request.ca, destination)
    output.target = destination if request.write else None
    result.files.append(output)

    if beside is not None:
        machine = "Podman Machine VM" if request.platform in ("windows", "desktop") else "machine"
        result.note(
            f"The CA goes to {destination} because --merge names {request.merge}, so "
            f"the platform's certs.d stays unchanged. podman reads it only from "
            f"{platform_destination}, so copy it there on the {machine} that runs "
            "podman. podman reads it on the next pull or push, and registries.conf "
            "needs no change."
        )
    elif request.write:
        result.note(
            f"podman reads {destination} on the next pull or push, and "
            "registries.conf needs no change."
        )
    else:
        result.note(
            f"Save the CA above as {destination}; podman reads it on the next pull or "
            "push, and registries.conf needs no change."
        )


def _main_file_for(merged: Path | None) -> Path | None:
    """Return the registries.conf that `--merge FILE` belongs to.

    A drop-in in a registries.conf.d folder belongs to the registries.conf
    beside that folder, because podman's layout keeps registries.conf,
    registries.conf.d and certs.d in one folder (containers-certs.d(5)).
    """
    if merged is not None and merged.parent.name == "registries.conf.d":
        return merged.parent.parent / "registries.conf"
    return merged
