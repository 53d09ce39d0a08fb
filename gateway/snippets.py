"""The core of `registry-gateway snippet`: registry names, reading and writing config files.

Each client module (`snippet_docker`, `snippet_containerd`, `snippet_podman`,
`snippet_k3s`, `snippet_buildkit`) turns a `Request` into a `Result`: the files
to write, the commands that make the client read them, and the messages for
the user. This module owns what they share: the registry name rules, reading
a user's file without ever changing it, and the one write path (backup, then
an atomic replace that keeps mode and owner).
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from gateway import files
from gateway.errors import GatewayError

NOTE, WARNING = "note", "warning"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9_-]*[a-z0-9])?$")
_BOM = "\ufeff"


@dataclass(frozen=True)
class Registry:
    """A registry as clients match it: `host[:port]` exactly as in the image reference.

    `network` is set instead of `host` for a CIDR entry, which only Docker accepts.
    """

    host: str = ""
    port: int | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    text: str = ""

    @property
    def name(self) -> str:
        if self.network is not None:
            return self.text
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port else host

    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


@dataclass
class Message:
    level: str
    text: str

    def line(self) -> str:
        return f"{self.level.capitalize()}: {self.text}"


@dataclass
class OutputFile:
    """One file the snippet produces.

    `path` is where the client reads it (shown to the user); `target` is where
    `--write` puts it, or None when it cannot be written for the user (a
    settings page). `original` is the file's text before the merge, or None
    when the file did not exist.
    """

    path: str
    content: str
    target: Path | None
    original: str | None = None
    raw: bytes | None = None
    binary: bytes | None = None
    copy_from: Path | None = None
    written: bool = False
    backup: Path | None = None

    @property
    def changed(self) -> bool:
        if self.binary is not None:
            return self.raw != self.binary
        return self.original != self.content

    def data(self) -> bytes:
        return self.binary if self.binary is not None else self.content.encode("utf-8")


@dataclass
class Result:
    files: list[OutputFile] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.messages.append(Message(NOTE, text))

    def warn(self, text: str) -> None:
        self.messages.append(Message(WARNING, text))


@dataclass
class Request:
    """The user's request, after argument parsing."""

    client: str
    registry: Registry
    insecure: bool
    ca: Path | None = None
    platform: str = "linux"
    merge: Path | None = None
    merge_requested: bool = False
    write: bool = False
    repair: bool = False
    convert: bool = False
    image: str | None = None
    containerd_config: Path | None = None
    name_notes: list[str] = field(default_factory=list)


# --- Registry names -------------------------------------------------------------


def parse_registry(value: str, allow_cidr: bool = False) -> tuple[Registry, list[str]]:
    """Normalise a `host[:port]` (or, with `allow_cidr`, a CIDR) and return it with notes.

    The rules follow dockerd's handling of insecure-registries: an `http://` or
    `https://` prefix is removed, any other scheme is invalid, and an entry
    must be a CIDR or `host[:port]`. A path is removed here (dockerd would
    refuse to start on it), and the host is lowercased because clients match
    the name exactly and image references are lowercase.
    """
    notes: list[str] = []
    text = value.strip()
    if text != value:
        notes.append(f"Removed the spaces around {value!r}.")

    match = _SCHEME.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme not in ("http", "https"):
            raise GatewayError(
                f"The registry {value!r} has the scheme {scheme}://, which no client "
                f"accepts here: give it as HOST:PORT, for example registry.example:5000."
            )
        text = text[match.end() :]
        notes.append(
            f"Removed {match.group(0)!r} from {value!r}: entries are host[:port] "
            "without a scheme."
        )

    network = _parse_cidr(text)
    if network is not None:
        if allow_cidr:
            return Registry(network=network, text=text), notes
        raise GatewayError(
            f"The registry {value!r} is an address range, but only dockerd matches "
            "registries by range: give the registry as HOST:PORT."
        )

    if "/" in text:
        text, _, path = text.partition("/")
        removed = f"the path /{path}" if path else "the trailing slash"
        notes.append(
            f"Removed {removed} from {value!r}: a registry entry is only host[:port], "
            "and dockerd refuses to start with a slash in one."
        )

    lowered = text.lower()
    if lowered != text:
        notes.append(
            f"Lowercased {text!r} to {lowered!r}: clients match the name exactly, "
            "and image references are lowercase."
        )
    host, port = _split_host_port(lowered, value)
    _check_host(host, value)
    return Registry(host=host, port=port, text=value), notes


def _parse_cidr(text: str):
    if "/" not in text:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _split_host_port(text: str, value: str) -> tuple[str, int | None]:
    if not text:
        raise GatewayError(
            f"The registry {value!r} has no host name: give it as HOST:PORT, "
            "for example registry.example:5000."
        )
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _invalid(value)
        port_text = rest[1:] if rest else None
        _require_ip(host, value, version=6)
    elif text.count(":") > 1:
        # A bare IPv6 address has no room for a port.
        _require_ip(text, value, version=6)
        return text, None
    else:
        host, colon, port_text = text.partition(":")
        port_text = port_text if colon else None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise GatewayError(
            f"The port {port_text!r} in {value!r} is not a number from 1 to 65535: "
            "give the port of the registry, for example registry.example:5000."
        )
    return host, int(port_text)


def _require_ip(text: str, value: str, version: int) -> None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _invalid(value) from None
    if address.version != version:
        raise _invalid(value)


def _check_host(host: str, value: str) -> None:
    if "*" in host:
        raise GatewayError(
            f"The registry {value!r} contains a wildcard, which dockerd rejects at "
            "start-up and other clients do not match: give each registry as HOST:PORT."
        )
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise _invalid(value)


def _invalid(value: str) -> GatewayError:
    return GatewayError(
        f"The registry {value!r} is neither host[:port] nor a CIDR: give it as "
        "HOST:PORT (registry.example:5000, 192.0.2.10:5000, [2001:db8::1]:5000)."
    )


def is_loopback(registry: Registry) -> bool:
    """Tell whether dockerd treats `registry` as insecure without any entry.

    dockerd always adds 127.0.0.0/8 and ::1/128 to the insecure CIDRs, and
    `localhost` resolves into them on every usual hosts file.
    """
    address = registry.address()
    if address is not None:
        return address.is_loopback
    return registry.host == "localhost" or registry.host.endswith(".localhost")


def image_registry(reference: str) -> str:
    """Return the registry part of an image reference, as the clients split it.

    The first path component is a registry when it contains a dot or a colon or
    is `localhost` (the distribution reference rule); otherwise the image is on
    Docker Hub.
    """
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


# --- Reading and writing the user's files --------------------------------------


class FileError(GatewayError):
    """A config file that cannot be used, with the 1-based position of the problem."""

    def __init__(self, message: str, path: Path, line: int | None, column: int | None):
        super().__init__(message)
        self.path, self.line, self.column = path, line, column

    def to_json(self) -> dict:
        return {
            "file": str(self.path),
            "line": self.line,
            "column": self.column,
            "message": str(self),
        }


@dataclass
class SourceFile:
    """A user's config file as read: `text` without a UTF-8 BOM, `raw` as on disk."""

    path: Path
    text: str
    raw: bytes
    exists: bool
    bom: bool = False

    def restore_bom(self, content: str) -> str:
        return _BOM + content if self.bom else content


def read_source(path: Path) -> SourceFile:
    """Read `path` for a merge; a missing file reads as empty, anything unreadable raises."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return SourceFile(path, "", b"", exists=False)
    except IsADirectoryError:
        raise GatewayError(
            f"{str(path)!r} is a folder, not a file: give the path of the config "
            f"file itself, for example {str(path / path.name)!r}."
        ) from None
    except PermissionError:
        raise GatewayError(
            f"Cannot read {str(path)!r}: permission denied. Run the command with sudo, "
            "or copy the file somewhere readable and give that copy."
        ) from None
    except NotADirectoryError:
        raise GatewayError(
            f"Cannot read {str(path)!r}: a part of the path is a file, not a folder. "
            "Give the path of the config file."
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = line_column(raw[: exc.start].decode("utf-8", "replace"))
        raise FileError(
            f"{path} line {line} column {column}: the byte 0x{raw[exc.start]:02x} is not "
            "UTF-8, and the client reads the file as UTF-8. Save the file as UTF-8 "
            "(for example iconv -f latin1 -t utf-8) and run the command again.",
            path,
            line,
            column,
        ) from None
    bom = text.startswith(_BOM)
    return SourceFile(path, text[1:] if bom else text, raw, exists=True, bom=bom)


def line_column(prefix: str) -> tuple[int, int]:
    """Return the 1-based line and column just after `prefix`."""
    line = prefix.count("\n") + 1
    column = len(prefix) - (prefix.rfind("\n") + 1) + 1
    return line, column


def check_writable(path: Path) -> None:
    """Raise before any backup when `path` exists and its mode is read-only.

    The atomic write renames a new file over the old one, which only needs
    write access to the folder, so a read-only mode would be silently ignored
    (and root ignores it anyway). A read-only mode is a user's choice to keep.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise GatewayError(
            f"{str(path)!r} is read-only (mode {stat.S_IMODE(mode):04o}), so it was "
            f"left unchanged: make it writable with chmod u+w {path} and run the "
            "command again, or leave out --write and apply the output by hand."
        )


def write_output(output: OutputFile) -> None:
    """Write one output file: check, back up the old file, then replace it atomically."""
    if output.target is None or not output.changed:
        return
    target = output.target
    if target.is_dir():
        raise GatewayError(
            f"{str(target)!r} is a folder, not a file: remove or rename it, then run "
            "the command again."
        )
    check_writable(target)
    try:
        if target.exists():
            output.backup = files.backup(target)
        files.atomic_write(target, output.data())
    except OSError as exc:
        raise GatewayError(
            f"Cannot write {str(target)!r}: {exc.strerror or exc}. Run the command "
            "with sudo, or leave out --write and apply the output by hand."
        ) from None
    output.written = True


def write_all(result: Result) -> None:
    """Write every output file; all are checked before the first is changed."""
    for output in result.files:
        if output.target is not None and output.changed:
            if output.target.is_dir():
                raise GatewayError(
                    f"{str(output.target)!r} is a folder, not a file: remove or "
                    "rename it, then run the command again."
                )
            check_writable(output.target)
    for output in result.files:
        write_output(output)


def ca_output(ca: Path, destination: Path, shown: str | None = None) -> OutputFile:
    """Return the CA file `ca` as an output copied to `destination`.

    The file must hold at least one PEM certificate: clients read `ca.crt` as
    PEM and skip anything else silently.
    """
    source = read_source(ca)
    if not source.exists:
        raise GatewayError(
            f"The CA file {str(ca)!r} does not exist: give the CA certificate, for "
            "example certs/ca.crt from registry-gateway serve."
        )
    if "-----BEGIN CERTIFICATE-----" not in source.text:
        raise GatewayError(
            f"The CA file {str(ca)!r} holds no PEM certificate: give the CA "
            "certificate in PEM form (it starts with -----BEGIN CERTIFICATE-----)."
        )
    if "PRIVATE KEY-----" in source.text:
        raise GatewayError(
            f"The CA file {str(ca)!r} contains a private key, which must never be "
            "copied to clients: give the file with only the CA certificate."
        )
    original = None
    raw = None
    if destination.is_file():
        raw = destination.read_bytes()
        original = raw.decode("utf-8", "replace")
    return OutputFile(
        path=shown or str(destination),
        content=source.text,
        target=destination,
        original=original,
        raw=raw,
        binary=source.raw,
        copy_from=ca,
    )


def default_merge_path(request: Request, default: Path | None, what: str) -> Path | None:
    """Return the file to merge into: `--merge FILE`, else the platform's, else None."""
    if request.merge is not None:
        return request.merge
    if request.merge_requested or request.write:
        require_native_paths(request, what)
        if default is None:
            raise GatewayError(
                f"There is no {what} file to write on --platform {request.platform}: "
                "give the file with --merge FILE, or leave out --write and paste the "
                "output where the note says."
            )
        return default
    return None


def require_native_paths(request: Request, what: str) -> None:
    """Raise when the platform's default paths cannot be used on this machine.

    A Windows path such as C:\\ProgramData\\... is a relative file name on Linux,
    so reading or writing it here would touch the wrong file.
    """
    if request.platform == "windows" and os.name != "nt":
        raise GatewayError(
            f"The Windows {what} path can be read or written only on Windows: run the "
            "command there, or give a copy of the file with --merge FILE."
        )


def os_sep_path(platform: str, *parts: str) -> str:
    """Join path parts with the separator of `platform` (backslash on Windows)."""
    separator = "\\" if platform == "windows" else "/"
    return separator.join(part.rstrip("\\/") for part in parts)


def expand(path: str) -> Path:
    return Path(os.path.expanduser(path))
