"""Probe steps 1 and 2: resolve the name, then open a TCP connection.

Error texts follow Go's `net` package as registry clients print them, e.g.
`dial tcp: lookup registry.invalid on 10.255.255.53:53: no such host` and
`dial tcp [::1]:5227: connect: connection refused` (checked against skopeo 1.9.3).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

from gateway.probe import Report, is_ip, join_host_port

HOSTS_FILE = Path("/etc/hosts")
RESOLV_CONF = Path("/etc/resolv.conf")


def hosts_file_addresses(name: str, hosts_file: Path = HOSTS_FILE) -> list[str]:
    """Return the addresses a hosts file maps `name` to, in file order."""
    try:
        text = hosts_file.read_text(errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name.lower() in (f.lower() for f in fields[1:]):
            found.append(fields[0])
    return found


def first_nameserver(resolv_conf: Path = RESOLV_CONF) -> str:
    """Return the resolver Go names in lookup errors: the first `nameserver`, port 53."""
    try:
        for line in resolv_conf.read_text(errors="replace").splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                return join_host_port(fields[1], 53)
    except OSError:
        pass
    # Go falls back to the local resolver when resolv.conf has no nameserver.
    return "127.0.0.1:53"


def resolve(report: Report, timeout: float) -> list[str]:
    """Step 1: resolve every address of the target and record whether the hosts file or DNS gave it."""
    target = report.target
    started = time.monotonic()
    if is_ip(target.host):
        report.step(
            "resolve",
            "ok",
            f"{target.host} is an IP address; nothing to resolve.",
            timeout,
            started,
        )
        report.evidence["addresses"] = [target.host]
        return [target.host]

    from_hosts = hosts_file_addresses(target.host)
    try:
        # NOTE: getaddrinfo cannot be cancelled, so `timeout` is reported but the
        # system resolver's own timeout (resolv.conf `options timeout`) applies.
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        go_error = (
            f"dial tcp: lookup {target.host} on {first_nameserver()}: no such host"
        )
        if exc.errno not in (
            socket.EAI_NONAME,
            getattr(socket, "EAI_NODATA", socket.EAI_NONAME),
        ):
            go_error = f"dial tcp: lookup {target.host} on {first_nameserver()}: server misbehaving"
        report.step(
            "resolve",
            "failed",
            f"The name {target.host!r} does not resolve: {exc.strerror}.",
            timeout,
            started,
            go_error,
        )
        report.evidence["addresses"] = []
        return []

    addresses: list[str] = []
    for info in infos:
        address = info[4][0]
        if address not in addresses:
            addresses.append(address)
    source = "hosts file" if from_hosts else "DNS"
    report.evidence["addresses"] = addresses
    report.evidence["resolved_from"] = source
    detail = f"{target.host} resolves to {', '.join(addresses)} (from the {source})."
    report.step("resolve", "ok", detail, timeout, started)
    return addresses


def connect_error_text(code: int | None) -> str:
    """Go's text for a connect errno: the lower-case strerror, e.g. `connection refused`."""
    if code is None:
        return "i/o timeout"
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


def connect(
    report: Report, addresses: list[str], timeout: float
) -> tuple[socket.socket | None, str]:
    """Step 2: connect to each address in order; return the first socket that connects."""
    target = report.target
    started = time.monotonic()
    errors: list[tuple[str, int | None]] = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((address, target.port))
        except socket.timeout:
            sock.close()
            errors.append((address, None))
        except OSError as exc:
            sock.close()
            errors.append((address, exc.errno))
        else:
            detail = f"Connected to {join_host_port(address, target.port)}."
            if errors:
                detail += (
                    " Failed first: "
                    + ", ".join(
                        f"{join_host_port(a, target.port)} ({connect_error_text(e)})"
                        for a, e in errors
                    )
                    + "."
                )
            report.step("connect", "ok", detail, timeout, started)
            return sock, address

    # Go reports the error of the first address it dialled.
    address, code = errors[0]
    dialled = join_host_port(address, target.port)
    if code is None:
        go_error = f"dial tcp {dialled}: i/o timeout"
        outcome = "timeout"
    else:
        go_error = f"dial tcp {dialled}: connect: {connect_error_text(code)}"
        outcome = {errno.ECONNREFUSED: "refused"}.get(code, "unreachable")
    report.evidence["connect"] = outcome
    detail = "; ".join(
        f"{join_host_port(a, target.port)}: {connect_error_text(e)}" for a, e in errors
    )
    report.step(
        "connect",
        "failed",
        f"No address accepted a TCP connection ({detail}).",
        timeout,
        started,
        go_error,
    )
    return None, ""
