"""Where each registry client reads the CA it trusts for a `host[:port]`, and writing it there.

`plan_export` returns the files (target path and content), the commands to run
afterwards and notes for one client. `write_plan` writes them under a root
folder: `/` to install on this host, or any folder to build a tree that mirrors
the targets for copying to other machines. A later `trust` command can call the
same two functions.

Sources for the layouts: Docker's "Verify repository client certificates" page
and moby's `registry.HostCertsDir` (on Windows the colon is removed from the
folder name), containerd `docs/hosts.md`, containers-certs.d(5), the k3s
private-registry page, and BuildKit's `buildkitd.toml` reference.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

from cryptography import x509

from gateway import certs
from gateway.certnames import split_host_port
from gateway.errors import CertificateError
from gateway.files import atomic_write, move_to_backup

CLIENTS = (
    "docker",
    "docker-rootless",
    "docker-windows",
    "containerd",
    "podman",
    "k3s",
    "buildkit",
    "system",
)
DEBIAN_ANCHORS = PurePosixPath("/usr/local/share/ca-certificates")
# The placeholder for the CA file in commands and notes, which `with_ca_file`
# replaces with a real path once the caller knows it.
CA_FILE = "CA_FILE"
RHEL_ANCHORS = PurePosixPath("/etc/pki/ca-trust/source/anchors")


@dataclass
class TrustFile:
    """One file a client reads. `shared` marks a config file that may list other registries."""

    target: PurePath
    content: bytes
    shared: bool = False


@dataclass
class TrustPlan:
    """The files, follow-up commands and notes that make one client trust the CA."""

    client: str
    title: str
    authority: str
    files: list[TrustFile] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_authority(value: str) -> tuple[str, int | None, str]:
    """Split `HOST[:PORT]` and return host, port and the authority as image references write it."""
    host, port = ("", None) if "/" in value else split_host_port(value)
    if not host:
        raise CertificateError(
            f"Invalid --host {value!r}: give the registry as image references name it, "
            "for example 'registry.local:5000'."
        )
    shown = f"[{host}]" if ":" in host else host
    return host, port, shown if port is None else f"{shown}:{port}"


def load_ca_for_export(path: Path) -> list[x509.Certificate]:
    """Read CA certificates to export, rejecting keys and leaf certificates."""
    if not Path(path).is_file():
        raise CertificateError(
            f"The CA file {str(path)!r} was not found: give it with --ca FILE, or create "
            f"a local CA with: registry-gateway certs init --dir {Path(path).parent}"
        )
    data = Path(path).read_bytes()
    if b"PRIVATE KEY" in data:
        raise CertificateError(
            f"The file {str(path)!r} contains a private key, which must never leave this "
            "host. Export the CA certificate only: --ca certs/ca.crt"
        )
    chain = certs.load_certs(path)
    for cert in chain:
        if not certs.is_ca(cert):
            raise CertificateError(
                f"The file {str(path)!r} contains the leaf certificate "
                f"{cert.subject.rfc4514_string()!r}, not a CA. A client trusting it would "
                "trust only that one certificate, and only until it expires. Export the "
                "CA that signed it, such as certs/ca.crt."
            )
    return chain


def export_warnings(chain: list[x509.Certificate], authority: str, port: int | None) -> list[str]:
    """Warnings about the CA file and the host name that apply to every client."""
    messages = []
    if port is None:
        messages.append(
            f"No port given: Docker matches the certs.d folder name exactly against the "
            f"image reference, so this CA is used only for images named {authority}/... "
            f"(port 443). For a registry on another port, run: registry-gateway certs "
            f"export --host {authority}:PORT ..."
        )
    for cert in chain:
        if cert.issuer != cert.subject:
            messages.append(
                f"The CA {cert.subject.rfc4514_string()!r} is an intermediate, so clients "
                f"stop trusting the registry when it expires on "
                f"{cert.not_valid_after_utc:%Y-%m-%d}. Export the root CA instead."
            )
    return messages


def plan_export(client: str, authority: str, chain: list[x509.Certificate], home: Path | None = None) -> TrustPlan:
    """Return the plan that makes `client` trust `chain` for the registry `authority`."""
    pem = b"".join(certs.cert_pem(cert) for cert in chain)
    builders = {
        "docker": _docker,
        "docker-rootless": lambda a, p: _docker_rootless(a, p, home),
        "docker-windows": _docker_windows,
        "containerd": _containerd,
        "podman": _podman,
        "k3s": _k3s,
        "buildkit": _buildkit,
        "system": _system,
    }
    if client not in builders:
        raise CertificateError(f"Unknown client {client!r}: use one of {', '.join(CLIENTS)}.")
    return builders[client](authority, pem)


def _loopback_note(authority: str) -> list[str]:
    # dockerd always treats 127.0.0.0/8 as insecure; current moby source adds
    # ::1/128, but dockerd 20.10 verified a registry on ::1 with certs.d.
    host = split_host_port(authority)[0]
    if host == "localhost" or host.startswith("127."):
        return [
            f"Docker treats {host} as an insecure registry, as it does every "
            "127.0.0.0/8 address: it skips certs.d and accepts any certificate, so "
            "this file takes effect only under a non-loopback name."
        ]
    if host == "::1":
        return [
            "Newer Docker releases treat ::1 as an insecure registry and skip certs.d "
            "for it; dockerd 20.10 still reads this file."
        ]
    return []


def _docker(authority: str, pem: bytes) -> TrustPlan:
    target = PurePosixPath("/etc/docker/certs.d") / authority / "ca.crt"
    return TrustPlan(
        "docker", "Docker Engine on Linux", authority, [TrustFile(target, pem)],
        notes=["dockerd reads certs.d at each connection, so no restart is needed.",
               *_loopback_note(authority)],
    )


def _docker_rootless(authority: str, pem: bytes, home: Path | None) -> TrustPlan:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str((home or Path.home()) / ".config")
    target = PurePosixPath(config_home) / "docker" / "certs.d" / authority / "ca.crt"
    return TrustPlan(
        "docker-rootless", "rootless Docker Engine", authority, [TrustFile(target, pem)],
        notes=["The folder is the rootless daemon user's $XDG_CONFIG_HOME/docker/certs.d "
               "(default ~/.config)."],
    )


def windows_folder_name(authority: str) -> str:
    """Return the certs.d folder name the Windows engine reads: the colon removed."""
    return authority.replace(":", "")


def _docker_windows(authority: str, pem: bytes) -> TrustPlan:
    folder = windows_folder_name(authority)
    target = PureWindowsPath(r"C:\ProgramData\docker\certs.d") / folder / "ca.crt"
    return TrustPlan(
        "docker-windows", "Docker Engine on Windows (Windows containers)", authority,
        [TrustFile(target, pem)],
        commands=["Restart-Service docker"],
        notes=[
            f"On Windows the folder is {folder!r}: the engine removes the colon, which "
            "no Windows folder name can contain.",
            "Docker Desktop with Linux containers reads no CA from this folder: import "
            "the CA into the Windows certificate store instead, with the Windows command "
            f"that registry-gateway certs export --host {authority} --for system --ca "
            f"{CA_FILE} prints, and restart Docker Desktop.",
        ],
    )


def _containerd(authority: str, pem: bytes) -> TrustPlan:
    folder = PurePosixPath("/etc/containerd/certs.d") / authority
    ca_target = folder / "ca.crt"
    hosts = (
        f'server = "https://{authority}"\n\n'
        f'[host."https://{authority}"]\n'
        '  capabilities = ["pull", "resolve", "push"]\n'
        f'  ca = "{ca_target}"\n'
    )
    return TrustPlan(
        "containerd", "containerd (CRI, ctr, nerdctl)", authority,
        [TrustFile(ca_target, pem), TrustFile(folder / "hosts.toml", hosts.encode(), shared=True)],
        notes=[
            "The CRI plugin reads this folder only with config_path set in "
            "/etc/containerd/config.toml: [plugins.\"io.containerd.grpc.v1.cri\".registry] "
            "for containerd 1.x, [plugins.\"io.containerd.cri.v1.images\".registry] for "
            "2.x, config_path = \"/etc/containerd/certs.d\". Changing config_path needs a "
            "containerd restart; files in the folder do not.",
            "ctr reads it only with --hosts-dir /etc/containerd/certs.d.",
        ],
    )


def _podman(authority: str, pem: bytes) -> TrustPlan:
    target = PurePosixPath("/etc/containers/certs.d") / authority / "ca.crt"
    return TrustPlan(
        "podman", "podman, buildah and skopeo", authority, [TrustFile(target, pem)],
        notes=["For rootless podman the per-user folder is ~/.config/containers/certs.d."],
    )


def _k3s(authority: str, pem: bytes) -> TrustPlan:
    ca_target = PurePosixPath("/etc/rancher/k3s/certs.d") / authority / "ca.crt"
    # The mirror entry makes k3s use the endpoint with the TLS config: some k3s
    # releases (1.27-1.29) applied configs only to mirror endpoints.
    registries = (
        "mirrors:\n"
        f'  "{authority}":\n'
        "    endpoint:\n"
        f'      - "https://{authority}"\n'
        "configs:\n"
        f'  "{authority}":\n'
        "    tls:\n"
        f"      ca_file: {ca_target}\n"
    )
    return TrustPlan(
        "k3s", "k3s", authority,
        [TrustFile(ca_target, pem),
         TrustFile(PurePosixPath("/etc/rancher/k3s/registries.yaml"), registries.encode(), shared=True)],
        commands=["systemctl restart k3s   # or k3s-agent on agent nodes"],
        notes=["Put both files on every node, servers included, then restart k3s on each."],
    )


def _buildkit(authority: str, pem: bytes) -> TrustPlan:
    ca_target = PurePosixPath("/etc/buildkit/certs") / authority / "ca.crt"
    config = f'[registry."{authority}"]\n  ca = ["{ca_target}"]\n'
    return TrustPlan(
        "buildkit", "BuildKit (buildkitd)", authority,
        [TrustFile(ca_target, pem),
         TrustFile(PurePosixPath("/etc/buildkit/buildkitd.toml"), config.encode(), shared=True)],
        commands=[
            "docker buildx create --use --buildkitd-config /etc/buildkit/buildkitd.toml"
        ],
        notes=["buildx copies the CA file named in buildkitd.toml into its container; "
               "the default docker driver uses dockerd's certs.d instead."],
    )


def _system(authority: str, pem: bytes) -> TrustPlan:
    name = "registry-gateway-" + "".join(c if c.isalnum() or c in ".-" else "_" for c in authority) + ".crt"
    debian, rhel = DEBIAN_ANCHORS / name, RHEL_ANCHORS / name
    return TrustPlan(
        "system", "The operating system trust store", authority,
        [TrustFile(debian, pem), TrustFile(rhel, pem)],
        commands=[
            "update-ca-certificates   # Debian, Ubuntu, as root, after writing " + str(debian),
            "update-ca-trust   # RHEL, Fedora, as root, after writing " + str(rhel),
            f"Import-Certificate -FilePath {CA_FILE} -CertStoreLocation Cert:\\LocalMachine\\Root   # Windows, PowerShell as Administrator",
            f"security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {CA_FILE}   # macOS, as root",
        ],
        notes=["dockerd on Linux merges the system store with certs.d; restart it after "
               "changing the system store."],
    )


def with_ca_file(plan: TrustPlan, path: PurePath | str) -> TrustPlan:
    """Return `plan` with the CA_FILE placeholder in its commands and notes replaced by `path`."""
    quoted = shlex.quote(str(path))
    return replace(
        plan,
        commands=[command.replace(CA_FILE, quoted) for command in plan.commands],
        notes=[note.replace(CA_FILE, quoted) for note in plan.notes],
    )


def for_this_host(plan: TrustPlan) -> TrustPlan:
    """Keep only the system-store files whose folder exists on this host."""
    if plan.client != "system":
        return plan
    files = [f for f in plan.files if Path(str(f.target.parent)).is_dir()]
    if not files:
        raise CertificateError(
            "Neither /usr/local/share/ca-certificates (Debian, Ubuntu) nor "
            "/etc/pki/ca-trust/source/anchors (RHEL, Fedora) exists here, so the system "
            "store cannot be installed: run the command for your platform shown by "
            "registry-gateway certs export --for system --host HOST:PORT"
        )
    return TrustPlan(plan.client, plan.title, plan.authority, files, plan.commands, plan.notes)


def local_path(root: Path, target: PurePath) -> Path:
    """Map a target path to a path under `root` (`C:\\X` becomes `ROOT/C/X`)."""
    parts = list(target.parts)
    anchor = parts.pop(0) if target.anchor else ""
    drive = anchor.rstrip("\\/").rstrip(":")
    return Path(root, *([drive] if drive else []), *parts)


@dataclass
class WrittenFile:
    target: PurePath
    path: Path
    backup: Path | None = None
    unchanged: bool = False


def write_plan(plan: TrustPlan, root: Path, force: bool = False) -> list[WrittenFile]:
    """Write the plan's files under `root`; existing different files need `force`."""
    results = [WrittenFile(f.target, local_path(root, f.target)) for f in plan.files]
    for item, trust_file in zip(results, plan.files):
        if not item.path.exists():
            continue
        if item.path.read_bytes() == trust_file.content:
            item.unchanged = True
        elif not force:
            hint = (
                " and may configure other registries; merge the entry shown by the same "
                "command without --out or --install into it by hand"
                if trust_file.shared else ""
            )
            raise CertificateError(
                f"The file {str(item.path)!r} already exists{hint}, so nothing was "
                "written. To replace it, rerun with --force (the old file moves to a "
                "timestamped backup first)."
            )

    stamp = time.strftime("%Y%m%d-%H%M%S")
    for item, trust_file in zip(results, plan.files):
        if item.unchanged:
            continue
        if item.path.exists():
            item.backup = move_to_backup(item.path, stamp)
        atomic_write(item.path, trust_file.content, mode=0o644)
    return results
