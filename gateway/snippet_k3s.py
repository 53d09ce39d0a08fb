"""k3s: a mirror and TLS config in `/etc/rancher/k3s/registries.yaml`.

k3s (k3s-io/docs, private registry configuration) keys `mirrors` and
`configs` by the registry exactly as in the image reference, `host:port`
included. An endpoint without a scheme means https, so a plain-HTTP registry
needs `http://`. The file is read at start-up only, and must be on every node,
servers included. ruamel.yaml's round-trip mode keeps the user's comments,
quotes and key order through the merge.
"""

from __future__ import annotations

import io
import warnings
from pathlib import PurePosixPath

import ruamel.yaml
import ruamel.yaml.error
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from gateway.client_paths import client_paths
from gateway.errors import GatewayError
from gateway.snippets import (
    OutputFile,
    Request,
    Result,
    SourceFile,
    ca_output,
    default_merge_path,
    read_source,
)

# The folder of registry CAs on each node, as `registry-gateway certs export
# --for k3s` lays it out, so ca_file is the same on every node.
NODE_CERTS_DIR = PurePosixPath("/etc/rancher/k3s/certs.d")


def build(request: Request) -> Result:
    result = Result()
    registry = request.registry
    paths = client_paths("k3s", request.platform)
    default = paths.config_path()
    merge_path = default_merge_path(request, default, "registries.yaml")
    target = merge_path or default

    source = read_source(merge_path) if merge_path else SourceFile(target, "", b"", False)
    if not source.exists:
        _check_yml_sibling(target, result)
    yaml = _yaml(source.text)
    document = _load(yaml, source)

    url = f"{'http' if request.insecure else 'https'}://{registry.name}"
    _set_mirror(document, source, registry.name, url, result)
    _check_portless_mirror(document, registry, result)
    if request.ca is not None:
        ca_output(request.ca, request.ca)  # validates that the file is a PEM CA
        _set_ca(document, source, registry.name, str(node_ca_path(registry.name)))

    stream = io.StringIO()
    yaml.dump(document, stream)
    content = stream.getvalue()
    result.files.append(
        OutputFile(
            path=str(target),
            content=content,
            target=target if request.write else None,
            original=source.text if source.exists else None,
        )
    )
    _notes(request, result, target)
    return result


def node_ca_path(name: str) -> PurePosixPath:
    """Return the path of the CA for the registry `name` (host:port) on a k3s node."""
    return NODE_CERTS_DIR / name / "ca.crt"


def _yaml(text: str) -> ruamel.yaml.YAML:
    yaml = ruamel.yaml.YAML(typ="rt")
    yaml.preserve_quotes = True
    mapping, offset = _guess_indent(text)
    yaml.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    return yaml


def _guess_indent(text: str) -> tuple[int, int]:
    """Return the mapping indent and the sequence dash offset the file uses (2 and 2 if new)."""
    mapping = offset = None
    lines = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    for previous, line in zip(lines, lines[1:]):
        outer = len(previous) - len(previous.lstrip())
        inner = len(line) - len(line.lstrip())
        if not previous.rstrip().endswith(":"):
            continue
        if line.lstrip().startswith("- ") and offset is None and inner >= outer:
            offset = inner - outer
        elif inner > outer and mapping is None:
            mapping = inner - outer
    return mapping or 2, 2 if offset is None else offset


def _load(yaml: ruamel.yaml.YAML, source: SourceFile):
    try:
        # ruamel.yaml only warns about some faults (a reused anchor); k3s's Go
        # parser may read them differently, so they are errors here too.
        with warnings.catch_warnings():
            warnings.simplefilter("error", ruamel.yaml.error.YAMLWarning)
            document = yaml.load(source.text)
    except (ruamel.yaml.YAMLError, ruamel.yaml.error.YAMLWarning) as exc:
        mark = getattr(exc, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark else ("?", "?")
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise GatewayError(
            f"{source.path} line {line} column {column}: {reason}, so k3s cannot read "
            "this file, and it was left unchanged. Fix the YAML there and run the "
            "command again."
        ) from None
    if document is None:
        return CommentedMap()
    if not isinstance(document, dict):
        raise _shape_error(source, document, "the file", "a mapping (mirrors: and configs:)")
    return document


def _shape_error(source, node, what: str, expected: str) -> GatewayError:
    line, column = _position(node)
    return GatewayError(
        f"{source.path} line {line} column {column}: {what} must be {expected}, and the "
        "file was left unchanged: fix it as in the k3s private registry documentation "
        "and run the command again."
    )


def _position(node) -> tuple[int, int]:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return 1, 1
    return lc.line + 1, lc.col + 1


def _child_map(parent, key: str, source, what: str):
    child = parent.get(key)
    if child is None:
        child = CommentedMap()
        parent[_quoted(key)] = child
        return child
    if not isinstance(child, dict):
        line, column = _key_position(parent, key)
        raise GatewayError(
            f"{source.path} line {line} column {column}: {what} must be a mapping, and "
            "the file was left unchanged: fix it as in the k3s private registry "
            "documentation and run the command again."
        )
    return child


def _key_position(parent, key) -> tuple[int, int]:
    try:
        line, column = parent.lc.key(key)
        return line + 1, column + 1
    except (AttributeError, KeyError, TypeError):
        return _position(parent)


def _quoted(key: str):
    # Quoted like the k3s documentation, so a YAML 1.1 parser never reads
    # host:port as anything but a string.
    return DoubleQuotedScalarString(key) if ":" in key else key


def _set_mirror(document, source, name: str, url: str, result: Result) -> None:
    mirrors = _child_map(document, "mirrors", source, "'mirrors'")
    mirror = _child_map(mirrors, name, source, f"the mirror {name!r}")
    endpoints = mirror.get("endpoint")
    if endpoints is None:
        mirror["endpoint"] = CommentedSeq([DoubleQuotedScalarString(url)])
        return
    if not isinstance(endpoints, list):
        line, column = _key_position(mirror, "endpoint")
        raise GatewayError(
            f"{source.path} line {line} column {column}: the endpoint of {name!r} must "
            f'be a list, for example endpoint: ["{url}"], and the file was left '
            "unchanged: fix it and run the command again."
        )
    if url in endpoints:
        result.note(f"The mirror {name!r} already lists the endpoint {url!r}.")
        return
    endpoints.insert(0, DoubleQuotedScalarString(url))
    result.note(
        f"Put {url!r} first in the endpoints of {name!r}; the others stay after it."
    )


def _set_ca(document, source, name: str, ca_file: str) -> None:
    configs = _child_map(document, "configs", source, "'configs'")
    config = _child_map(configs, name, source, f"the config {name!r}")
    tls = _child_map(config, "tls", source, f"the tls of {name!r}")
    tls["ca_file"] = ca_file
    if "insecure_skip_verify" in tls:
        del tls["insecure_skip_verify"]


def _check_portless_mirror(document, registry, result: Result) -> None:
    mirrors = document.get("mirrors") or {}
    if registry.port is not None and registry.host in mirrors:
        result.warn(
            f"The mirror {registry.host!r} has no port, so it does not apply to images "
            f"named {registry.name}/...: k3s matches the exact host:port."
        )


def _check_yml_sibling(target, result: Result) -> None:
    sibling = target.with_suffix(".yml")
    if sibling.exists():
        result.warn(
            f"{sibling} exists, but k3s reads only {target.name}: move its settings "
            f"into {target} (this output) and remove {sibling.name}."
        )


def _notes(request: Request, result: Result, target) -> None:
    registry = request.registry
    result.note(
        f"Every node needs this {target}, servers included, and k3s reads it only at "
        "start-up: restart k3s on each node (the k3s unit on servers, k3s-agent on "
        "agents)."
    )
    result.commands.append("sudo systemctl restart k3s")
    result.commands.append("sudo systemctl restart k3s-agent")
    if request.ca is not None:
        result.note(
            f"Copy {request.ca.resolve()} to {node_ca_path(registry.name)} on every "
            "node, servers included, before the restart: k3s reads ca_file on the node "
            "itself, and --write changes only registries.yaml."
        )
    if request.insecure:
        result.warn(
            f"The http:// endpoint sends plain HTTP to {registry.name}, so anyone on "
            "the network path can read or change images: for a TLS registry use --ca."
        )
    if registry.port is None:
        result.warn(
            f"{registry.name!r} has no port, so the mirror matches only image "
            "references written without one: give HOST:PORT otherwise."
        )
    result.note(
        "k3s tries the default endpoint https://"
        f"{registry.name}/v2 last, so a pull error may show only that endpoint; the real "
        "cause is in /var/lib/rancher/k3s/agent/containerd/containerd.log."
    )
