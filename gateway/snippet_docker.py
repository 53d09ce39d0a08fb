"""Docker: the `insecure-registries` merge into daemon.json, or a certs.d CA.

dockerd's rules, as observed with Debian's dockerd 20.10.24: the key is
`insecure-registries`, plural, and its value is a list of strings. An entry is
the registry's `host[:port]` as written in the image reference, or a CIDR. The
match is exact, so a missing or wrong port silently does nothing. A trailing
slash, a wildcard, a string instead of a list or broken JSON stop dockerd from
starting. 127.0.0.0/8 and ::1/128 are always insecure, and SIGHUP reloads the
list.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
from urllib.parse import urlsplit

from gateway import snippet_json
from gateway.client_paths import client_paths, folder_beside, registry_folder_name
from gateway.errors import GatewayError
from gateway.snippets import (
    OutputFile,
    Registry,
    Request,
    Result,
    SourceFile,
    ca_output,
    default_merge_path,
    is_loopback,
    os_sep_path,
    parse_registry,
    read_source,
    require_native_paths,
)

KEY = "insecure-registries"
MIRRORS = "registry-mirrors"


def build(request: Request) -> Result:
    result = Result()
    paths = client_paths("docker", request.platform)
    merge_path = default_merge_path(request, paths.config_path(), "daemon.json")
    source = read_source(merge_path) if merge_path else None

    if request.ca is not None:
        _build_ca(request, result, source)
    else:
        _build_insecure(request, result, source, merge_path)
    _check_image(request, result)
    return result


def _build_insecure(request, result, source, merge_path) -> None:
    paths = client_paths("docker", request.platform)
    registry = request.registry
    if source is None:
        source = SourceFile(merge_path, "", b"", exists=False)
    content, changed = merge_daemon_json(source, registry, result, request.repair)

    shown = str(merge_path) if merge_path else paths.config_location
    result.files.append(
        OutputFile(
            path=shown,
            content=content,
            target=merge_path if request.write else None,
            original=source.restore_bom(source.text) if source.exists else (None if changed else content),
            raw=source.raw if source.exists else None,
        )
    )
    if merge_path is None:
        result.note(
            f"This is the whole daemon.json for a machine without one. To keep an "
            f"existing file's settings, add --merge (default {paths.config_location}), "
            "because a hand edit with one stray comma stops dockerd from starting."
        )
    if changed:
        result.warn(
            f"--insecure makes dockerd skip certificate checks for {registry.name} and "
            "fall back to plain HTTP, so anyone on the network path can read or change "
            "images and credentials: prefer the gateway with --ca."
        )
        _reload_steps(request, result, shown, registry)


def merge_daemon_json(
    source: SourceFile, registry: Registry, result: Result, repair: bool = False
) -> tuple[str, bool]:
    """Return daemon.json with `registry` in `insecure-registries`, and whether it changed."""
    if repair:
        repaired = _try_repair(source, result)
        if repaired is not None:
            source = repaired
    document = snippet_json.parse_object(source, "dockerd")

    document, entries, old = _collect_entries(source, document, result)
    _check_mirrors(source, document, registry, result)

    covered = _covered_by(entries, registry)
    if covered:
        result.note(covered)
    elif registry.name in entries:
        result.note(f"The insecure-registries list already contains {registry.name!r}.")
    else:
        entries.append(registry.name)

    new_list = snippet_json.format_list(entries, document, old)
    if old is None:
        if entries:
            document = snippet_json.add_member(document, KEY, new_list)
    elif document.text[old.value_start : old.value_end] != new_list:
        document = snippet_json.replace_value(document, old, new_list)

    if not source.text.strip():
        # An empty or missing file reads as {}: it changes only when an entry goes in.
        return document.text + "\n", bool(document.members)
    content = source.restore_bom(document.text)
    return content, content != source.restore_bom(source.text)


def _try_repair(source: SourceFile, result: Result) -> SourceFile | None:
    try:
        json.loads(source.text or "{}")
        return None
    except json.JSONDecodeError:
        pass
    repaired = snippet_json.repair(source.text)
    if repaired is None:
        return None
    value, notes = repaired
    for note in notes:
        result.note(f"Repair of {source.path}: {note}")
    result.warn(
        f"{source.path} was not valid JSON: check the repaired file below before "
        "writing it with --write."
    )
    text = json.dumps(value) + ("\n" if source.text.endswith("\n") else "")
    return SourceFile(source.path, text, source.raw, exists=True, bom=source.bom)


def _collect_entries(source, document, result):
    """Gather the existing entries, normalised, from the right key and near misses."""
    entries: list[str] = []
    old = document.find(KEY)
    duplicates = [member for member in document.members if member.key == KEY]
    if len(duplicates) > 1:
        result.warn(
            f"{source.path} has the key {KEY!r} {len(duplicates)} times; dockerd uses "
            "only the last, and so does this merge."
        )
    if old is not None:
        entries += _entries_of(source, old, result)

    for member in list(document.members):
        if member.key == KEY or not _near_miss(member.key):
            continue
        position = snippet_json.position_of(source, member.key_start)
        result.warn(
            f"{position}: the key {member.key!r} is not a dockerd setting (old dockerd "
            f"ignores it silently, new dockerd refuses to start); its entries were "
            f"moved to {KEY!r}. Check the result with dockerd --validate."
        )
        moved = _entries_of(source, member, result)
        entries += [entry for entry in moved if entry not in entries]
        if old is None:
            document = snippet_json.rename_key(document, member, KEY)
            old = document.find(KEY)
        else:
            document = snippet_json.remove_member(document, member)
            old = document.find(KEY)
    return document, _unique(entries, source, result), old


def _entries_of(source, member, result) -> list[str]:
    position = snippet_json.position_of(source, member.value_start)
    value = member.value
    if isinstance(value, str):
        result.note(
            f"{position}: {member.key!r} was a string, which stops dockerd from "
            "starting; it is now a list."
        )
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise GatewayError(
            f"{position}: {member.key!r} must be a list of strings, for example "
            f'["registry.example:5000"], and the file was left unchanged: fix that '
            "value and run the command again."
        )
    entries = []
    for item in value:
        try:
            registry, notes = parse_registry(item, allow_cidr=True)
        except GatewayError:
            result.warn(
                f"{position}: the existing entry {item!r} is neither host[:port] nor "
                "a CIDR, so dockerd refuses to start with it: remove it."
            )
            entries.append(item)
            continue
        for note in notes:
            result.note(f"{position}: {note}")
        entries.append(registry.name)
    return entries


def _unique(entries: list[str], source, result) -> list[str]:
    unique: list[str] = []
    for entry in entries:
        if entry in unique:
            result.note(f"Removed the duplicate entry {entry!r} from {source.path}.")
        else:
            unique.append(entry)
    return unique


def _near_miss(key: str) -> bool:
    folded = key.lower().replace("_", "-")
    squashed = folded.replace("-", "")
    if squashed in ("insecureregistry", "insecureregistries"):
        return True
    return difflib.SequenceMatcher(None, folded, KEY).ratio() >= 0.85


def _covered_by(entries: list[str], registry: Registry) -> str | None:
    if is_loopback(registry):
        return (
            f"dockerd treats {registry.name} as insecure without an entry, because "
            "127.0.0.0/8 and ::1/128 always are: nothing to add."
        )
    address = registry.address()
    if address is None:
        return None
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if "/" in entry and address in network:
            return f"The existing CIDR entry {entry!r} covers {registry.name}: nothing to add."
    return None


def _check_mirrors(source, document, registry, result) -> None:
    mirrors = document.find(MIRRORS)
    if mirrors is None or not isinstance(mirrors.value, list):
        return
    for url in mirrors.value:
        if isinstance(url, str) and urlsplit(url.strip()).netloc.lower() == registry.name:
            position = snippet_json.position_of(source, mirrors.value_start)
            result.warn(
                f"{position}: {MIRRORS!r} lists {url!r}, but dockerd uses mirrors only "
                f"for Docker Hub images, so it does not make {registry.name} reachable; "
                f"the {KEY!r} entry does."
            )


def _reload_steps(request, result, shown, registry) -> None:
    platform = request.platform
    if platform == "desktop":
        result.note(
            "Paste the whole JSON into Docker Desktop's Settings > Docker Engine and "
            "click Apply & Restart."
        )
        return
    if platform == "windows":
        result.commands.append("Restart-Service docker")
        result.note("Restart the Docker service to load the file (no SIGHUP on Windows).")
    elif platform == "rootless":
        result.commands.append("systemctl --user restart docker")
    else:
        result.commands.append(f"sudo dockerd --validate --config-file {shown}")
        result.commands.append("sudo systemctl reload docker")
        result.note(
            "dockerd reloads insecure-registries on SIGHUP, which systemctl reload "
            "sends; without systemd, run sudo kill -HUP $(pidof dockerd). "
            "dockerd --validate needs Docker 23 or newer."
        )
    result.commands.append("docker info")
    result.note(
        f"Check that docker info lists {registry.name} under Insecure Registries: "
        "that is the proof the setting is active."
    )


def _build_ca(request: Request, result: Result, source: SourceFile | None) -> None:
    registry = request.registry
    paths = client_paths("docker", request.platform)
    if request.platform == "desktop":
        result.files.append(ca_output(request.ca, request.ca, "the host's trust store"))
        result.files[-1].target = None
        result.note(
            "Docker Desktop trusts the CAs of the host's trust store: on macOS, "
            "sudo security add-trusted-cert -d -r trustRoot -k "
            "/Library/Keychains/System.keychain ca.crt; on Windows, Import-Certificate "
            "-FilePath ca.crt -CertStoreLocation Cert:\\LocalMachine\\Root. Then "
            "restart Docker Desktop."
        )
        return

    folder = registry_folder_name(registry.name, request.platform)
    platform_shown = os_sep_path(request.platform, paths.certs_dir, folder, "ca.crt")
    beside = folder_beside(request.merge, paths.config_path())
    if beside is not None:
        # Windows too, although its certs.d is not beside daemon.json, because a
        # copy given with --merge must never lead to a write in C:\ProgramData.
        destination = beside / "certs.d" / folder / "ca.crt"
        shown = str(destination)
    else:
        if request.write:
            require_native_paths(request, "certs.d")
        destination = paths.certs_path() / folder / "ca.crt"
        shown = platform_shown
    output = ca_output(request.ca, destination, shown)
    output.target = destination if request.write else None
    result.files.append(output)
    if beside is not None and request.platform == "windows":
        result.note(
            f"The CA goes to {shown}, in the certs.d folder beside {request.merge}. "
            f"dockerd reads it only from {platform_shown}, so copy it there on the "
            "Windows machine, then run Restart-Service docker."
        )
    elif beside is not None:
        result.note(
            f"The CA goes to {shown}, in the certs.d folder beside {request.merge}. "
            f"dockerd reads it only from {platform_shown}, so copy it there on the "
            "machine that runs dockerd. dockerd reads it on the next pull or push, "
            "with no restart."
        )
    elif request.write and request.platform == "windows":
        result.note(f"dockerd reads {shown} after Restart-Service docker.")
    elif request.write:
        result.note(f"dockerd reads {shown} on the next pull or push, with no restart.")
    elif request.platform == "windows":
        result.note(f"Save the CA above as {shown}, then run Restart-Service docker.")
    else:
        result.note(
            f"Save the CA above as {shown}; dockerd reads it on the next pull or push, "
            "with no restart."
        )
    if request.platform == "windows":
        result.commands.append("Restart-Service docker")
    if source is not None and source.exists:
        _warn_if_listed_insecure(source, registry, result)


def _warn_if_listed_insecure(source: SourceFile, registry: Registry, result: Result) -> None:
    try:
        document = snippet_json.parse_object(source, "dockerd")
    except GatewayError:
        return
    member = document.find(KEY)
    if member is not None and isinstance(member.value, list):
        if registry.name in member.value:
            result.warn(
                f"{source.path} lists {registry.name} in {KEY!r}: dockerd does not "
                "load certs.d for an insecure registry, so remove that entry to use "
                "the CA."
            )


def _check_image(request: Request, result: Result) -> None:
    registry = request.registry
    if not request.image and registry.network is None and registry.port is None:
        result.warn(
            f"{registry.name!r} has no port, so it matches only image references "
            f"written without one (port 443); for registry.example:5000/app give "
            f"{registry.name}:PORT."
        )
