"""Client bootstrap: fetch a gateway's CA, check it, and write it where clients read it.

Trust is what is being set up, so the first connection cannot verify the server.
What makes the download safe is the CA's SHA-256 fingerprint, compared with the
one `registry-gateway serve` prints on the gateway host (the model is step's
`ca bootstrap --fingerprint`). Without a fingerprint the user confirms the one
shown: trust on first use. Before anything is written, the certificate the
server presented must chain to the fetched CA and cover the host name, so the
CA written is the one that makes clients accept this server.

A server that does not serve `/_gateway/ca.crt` (a registry or proxy that is not
ours) gets the top certificate of its presented chain instead. When that is the
leaf itself, trusting it works only until the leaf is renewed.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from cryptography import x509

from gateway import certs, clients, export, probe, probe_verify
from gateway.client_paths import client_paths
from gateway.errors import GatewayError
from gateway.status import PREFIX

CA_PATH = PREFIX + "ca.crt"
# A CA certificate is a few kilobytes, so a larger response is not one.
MAX_CA_BYTES = 64 * 1024
CLIENTS = ("docker", "containerd", "podman")

# (client, platform) -> the `certs export` layout that client reads there.
# Docker Desktop runs dockerd in a VM that trusts the host's certificate store,
# and Podman Machine reads the Linux paths inside its VM.
LAYOUTS = {
    ("docker", "linux"): "docker",
    ("docker", "rootless"): "docker-rootless",
    ("docker", "windows"): "docker-windows",
    ("docker", "desktop"): "system",
    ("containerd", "linux"): "containerd",
    ("podman", "linux"): "podman",
    ("podman", "rootless"): "podman",
    ("podman", "windows"): "podman",
    ("podman", "desktop"): "podman",
}


@dataclass
class Fetched:
    """The chain a server presented and the certificate offered for trust."""

    authority: str
    chain: list[x509.Certificate]
    ca: x509.Certificate
    # The origin of `ca`: the gateway's CA URL, or the top of the presented chain.
    source: str
    from_gateway: bool
    notes: list[str] = field(default_factory=list)

    @property
    def is_leaf(self) -> bool:
        return not certs.is_ca(self.ca)


def normalize_fingerprint(text: str) -> str:
    """Return a SHA-256 fingerprint as 64 lower-case hex digits, with colons and case ignored."""
    value = "".join(text.split()).replace(":", "").lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(
            f"invalid fingerprint {text!r}: give the CA's SHA-256 fingerprint as 64 "
            "hex digits, with or without colons, as registry-gateway serve prints it"
        )
    return value


def colon_form(hex_digits: str) -> str:
    """Return 64 hex digits as `AB:CD:...`, the form `registry-gateway serve` prints."""
    return ":".join(hex_digits[i : i + 2] for i in range(0, len(hex_digits), 2)).upper()


def fetch(host: str, port: int, authority: str, timeout: float) -> Fetched:
    """Connect without verification, keep the presented chain, and GET the CA on that connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    url = f"https://{authority}{CA_PATH}"
    try:
        connection.connect()
        chain = _presented_chain(connection.sock)
        connection.request("GET", CA_PATH, headers={"Accept": "application/x-pem-file"})
        response = connection.getresponse()
        body = response.read(MAX_CA_BYTES + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise GatewayError(
            f"Fetching {url} failed: {_reason(exc)}. Nothing was written. To see what "
            f"answers there, run: registry-gateway probe {authority}"
        ) from None
    finally:
        connection.close()

    served = _served_ca(response.status, body)
    if isinstance(served, x509.Certificate):
        return Fetched(authority, chain, served, url, from_gateway=True)
    top = chain[-1]
    note = (
        f"{url} {served}, so the certificate offered is the top one of the chain "
        f"the server presented ({len(chain)} certificate(s)): "
        f"{top.subject.rfc4514_string()!r}."
    )
    return Fetched(authority, chain, top, "the presented chain", False, [note])


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake failed ({exc.reason or exc}), so the port may not speak TLS"
    if isinstance(exc, socket.gaierror):
        return f"the name does not resolve ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _presented_chain(sock: ssl.SSLSocket) -> list[x509.Certificate]:
    # NOTE: `_sslobj.get_unverified_chain()` is private in Python 3.11 (public as
    # SSLSocket.get_unverified_chain from 3.13); the leaf alone is the fallback.
    getter = getattr(getattr(sock, "_sslobj", None), "get_unverified_chain", None)
    ders = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in (getter() or [])] if getter else []
    if not ders:
        ders = [sock.getpeercert(binary_form=True)]
    return [x509.load_der_x509_certificate(der) for der in ders]


def _served_ca(status: int, body: bytes) -> x509.Certificate | str:
    """Return the certificate in a CA response, or the reason it contains none."""
    if status != 200:
        return f"answered {status}"
    if len(body) > MAX_CA_BYTES:
        return f"answered with more than {MAX_CA_BYTES} bytes"
    try:
        return x509.load_pem_x509_certificates(body)[0]
    except ValueError:
        return "answered 200, but not with a PEM certificate"


def check_fingerprint(fetched: Fetched, expected: str) -> None:
    """Raise unless the offered certificate's SHA-256 fingerprint is `expected` (hex digits)."""
    actual = certs.fingerprint(fetched.ca)
    if actual.replace(":", "").lower() == expected:
        return
    raise GatewayError(
        f"The CA from {fetched.source} has the SHA-256 fingerprint {actual}, but "
        f"--fingerprint gave {colon_form(expected)}, so nothing was written. Either the "
        "gateway's CA changed or something between here and it answers instead: compare "
        "with the fingerprint that registry-gateway serve prints on the gateway host."
    )


def check_presented(fetched: Fetched, host: str) -> None:
    """Raise unless the presented leaf chains to the offered certificate and covers `host`."""
    leaf = fetched.chain[0]
    anchor = [probe_verify.Anchor(fetched.ca, fetched.source)]
    chain, text = probe_verify.build_chain(leaf, fetched.chain[1:], anchor)
    if not chain:
        raise GatewayError(
            f"The certificate {fetched.authority} presented does not chain to the CA from "
            f"{fetched.source} ({text}), so nothing was written: clients trusting that CA "
            "would still reject this server. On the gateway host, check it with: "
            "registry-gateway certs check"
        )
    verdict, text = probe_verify.hostname_error(leaf, host)
    if verdict:
        raise GatewayError(
            f"The certificate {fetched.authority} presented does not cover {host!r} "
            f"({text}), so nothing was written. {_add_name_fix(leaf, host)}"
        )


def _add_name_fix(leaf: x509.Certificate, host: str) -> str:
    """Return the fix that adds `host` to the gateway's certificate and keeps its other names.

    `certs issue --force NAME` alone would issue a leaf for that one name and
    break every client that connects by another.
    """
    dns_names, addresses = certs.san_names(leaf)
    current = [*dns_names, *addresses]
    names = " ".join([*current, host])
    name_options = " ".join(f"--name {name}" for name in [*current, host])
    return (
        "Connect by a name the certificate contains, or add the name on the gateway "
        f"host: restart the gateway with it added, registry-gateway serve ... "
        f"{name_options} (serve reissues its leaf keeping every old name), or issue "
        "the leaf with the full list, the certificate's current names and the new "
        f"one: registry-gateway certs issue --force {names}"
    )


def warnings_for(fetched: Fetched, port: int | None) -> list[str]:
    """Warnings about the certificate offered: a leaf, an intermediate, a missing port."""
    messages = []
    if fetched.is_leaf:
        messages.append(
            f"The certificate offered, {fetched.ca.subject.rfc4514_string()!r}, is the "
            "server's leaf certificate, not a CA: clients trusting it fail with "
            '"x509: certificate signed by unknown authority" again once it is renewed '
            f"(it expires on {fetched.ca.not_valid_after_utc:%Y-%m-%d}). Where you can, "
            f"install the CA that signed it, {fetched.ca.issuer.rfc4514_string()!r}, "
            f"with: registry-gateway certs export --ca FILE --host {fetched.authority} "
            "--for docker --install"
        )
    if port is None:
        messages.append(
            f"No port given: Docker matches the certs.d folder name exactly against "
            f"the image reference, so this CA is used only for images named "
            f"{fetched.authority}/... (port 443). For a registry on another port, run: "
            f"registry-gateway trust {fetched.authority}:PORT ..."
        )
    if not fetched.is_leaf:
        # A placeholder port keeps out export's own no-port warning, which names
        # its own command.
        messages += export.export_warnings([fetched.ca], fetched.authority, 443)
    return messages


def build_plans(
    chosen: list[str], platform: str, authority: str, ca: x509.Certificate
) -> tuple[list[tuple[str, export.TrustPlan]], list[str]]:
    """Return (client, export plan) pairs for the chosen clients, and notes on skipped ones."""
    plans, skipped = [], []
    for client in chosen:
        layout = LAYOUTS.get((client, platform))
        if layout is None:
            known = ", ".join(p for c, p in LAYOUTS if c == client)
            skipped.append(
                f"{client} has no CA layout for --platform {platform}, so it was "
                f"skipped; its layouts are for {known}."
            )
            continue
        plan = export.plan_export(layout, authority, [ca])
        if (client, platform) == ("podman", "rootless"):
            plan = _rootless_podman(plan)
        plans.append((client, plan))
    return plans, skipped


def _rootless_podman(plan: export.TrustPlan) -> export.TrustPlan:
    # containers-certs.d(5): rootless podman reads $HOME/.config/containers/certs.d.
    folder = client_paths("podman", "rootless").certs_path()
    files = [
        replace(f, target=PurePosixPath(folder, plan.authority, f.target.name))
        for f in plan.files
    ]
    return replace(plan, title="rootless podman, buildah and skopeo", files=files, notes=[])


def check_shared_files(plans: list[export.TrustPlan], root: Path, fingerprint: str | None) -> None:
    """Raise if a config file that may list other registries exists under `root` and differs.

    Such a file (containerd's hosts.toml) can hold the user's mirrors, comments and
    settings such as override_path, so it is merged by hand, never replaced.
    `fingerprint` is the one the user gave with --fingerprint, shown in the fix.
    """
    for plan in plans:
        for trust_file in plan.files:
            path = export.local_path(root, trust_file.target)
            if not trust_file.shared or not path.is_file():
                continue
            if path.read_bytes() == trust_file.content:
                continue
            ca_file = PurePosixPath(plan.files[0].target)
            shown = fingerprint or "SHA256"
            raise GatewayError(
                f"The file {str(path)!r} already exists and differs from the one trust "
                "writes, and it may configure other registries or mirrors, so nothing "
                f"was written. Add the CA to its [host.\"https://{plan.authority}\"] "
                f"table by hand (ca = \"{ca_file}\"), or merge it with: "
                f"registry-gateway snippet {plan.client} {plan.authority} --ca CA --merge "
                f"{path} --write. Here CA is the gateway's CA file: registry-gateway "
                f"trust {plan.authority} --fingerprint {shown} --for {plan.client} --out "
                f"DIR writes it to DIR{ca_file}."
            )


def write(plans: list[export.TrustPlan], root: Path) -> list[list[export.WrittenFile]]:
    """Write each plan under `root`: identical files stay, different ones move to a backup.

    Call `check_shared_files` first, because this replaces shared files too.
    """
    written = []
    for plan in plans:
        try:
            written.append(export.write_plan(plan, root, force=True))
        except PermissionError as exc:
            raise GatewayError(
                f"Writing {exc.filename!r} failed: permission denied. Run the same "
                "command as root (sudo registry-gateway trust ...), or write a tree "
                "to copy with --out DIR."
            ) from None
    return written


@dataclass
class Outcome:
    """One client's predicted result with the new trust, and its error text on failure."""

    client: str
    ok: bool
    message: str


def verify(
    target: probe.Target, client: str, ca_file: Path, timeout: float
) -> Outcome:
    """Probe `target` as `client` would, trusting the CA file just written."""
    # Docker and containers/image look for HOST:PORT/*.crt under certs.d, so give
    # the probe that root when the file sits in such a folder: it checks the name.
    if ca_file.parent.name == target.reference:
        options = probe.Options(cert_dir=ca_file.parent.parent, client=client)
    else:
        options = probe.Options(ca_files=[ca_file], client=client)
    options.timeout = timeout
    over_https = client == "containerd" and clients.ctr_uses_plain_http(target)
    if over_https:
        # The hosts.toml written sets server = "https://HOST:PORT", which turns off
        # ctr's plain-HTTP default for loopback names: verified HTTPS decides, as
        # it does for podman.
        options.client = "podman"
    report = probe.run(target, options)
    prediction = report.clients[0]
    if prediction.ok:
        return Outcome(client, True, "OK")
    message = prediction.core or prediction.message
    if over_https:
        message = f"over HTTPS, as the hosts.toml sets it: {message}"
    return Outcome(client, False, message)
