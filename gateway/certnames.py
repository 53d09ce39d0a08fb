"""Names in certificates: parsing, detection on this host, and name constraints.

A leaf certificate names its host in subjectAltName entries. A DNS name becomes a
dNSName and an address becomes an iPAddress, never a dNSName holding the string,
because Go's crypto/x509 matches an address only against iPAddress entries. A
port never belongs in a name.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from gateway.errors import CertificateError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MAX_LABEL = 63

# Linux ioctl that returns an interface's IPv4 address (linux/sockios.h).
SIOCGIFADDR = 0x8915
PROC_IF_INET6 = Path("/proc/net/if_inet6")


@dataclass
class ParsedNames:
    """Names sorted by SAN type, plus notes about what parsing changed."""

    dns_names: list[str] = field(default_factory=list)
    addresses: list[IPAddress] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return [*self.dns_names, *(str(a) for a in self.addresses)]


def split_host_port(value: str) -> tuple[str, int | None]:
    """Split `HOST[:PORT]` or `[IPV6][:PORT]`; a bare IPv6 address has no port."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise CertificateError(
                f"Invalid address {value!r}: write an IPv6 address with a port as "
                "'[::1]:5443'."
            )
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if port_text and not (port_text.isdigit() and 0 < int(port_text) <= 65535):
        raise CertificateError(
            f"Invalid port in {value!r}: use a number from 1 to 65535."
        )
    return host, int(port_text) if port_text else None


def normalize_dns_name(value: str) -> str:
    """Lower-case a DNS name, encode it as IDNA, and reject characters DNS forbids."""
    name = value.strip().lower().rstrip(".")
    try:
        name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise CertificateError(f"Invalid DNS name {value!r}: it cannot be IDNA-encoded.") from None
    labels = name.split(".")
    wildcard_ok = labels[0] == "*" and len(labels) > 2
    for index, label in enumerate(labels):
        if index == 0 and wildcard_ok:
            continue
        if not label or len(label) > MAX_LABEL or label.startswith("-") or label.endswith("-"):
            break
        if not all(c.isalnum() or c in "-_" for c in label):
            break
    else:
        return name
    raise CertificateError(
        f"Invalid DNS name {value!r}: a name is labels of letters, digits and hyphens "
        "joined by dots, such as 'registry.local', with an optional '*.' in front."
    )


def parse_names(values: list[str]) -> ParsedNames:
    """Sort `values` into DNS names and addresses, dropping ports and duplicates."""
    parsed = ParsedNames()
    for value in values:
        if "://" in value or "/" in value:
            raise CertificateError(
                f"Invalid name {value!r}: give a host name or an IP address, without "
                "scheme or path, for example 'registry.local' or '192.0.2.10'."
            )
        host, port = split_host_port(value)
        if port is not None:
            parsed.notes.append(
                f"Dropped the port from {value!r}: a certificate name never carries a "
                "port, and the same certificate serves every port."
            )
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            name = normalize_dns_name(host)
            if name not in parsed.dns_names:
                parsed.dns_names.append(name)
        else:
            if address not in parsed.addresses:
                parsed.addresses.append(address)
    return parsed


def detect_names() -> list[str]:
    """List this host's names: host name, FQDN, non-loopback addresses, loopback names."""
    names: list[str] = []
    hostname = socket.gethostname()
    for name in (hostname, socket.getfqdn(hostname)):
        if name and name not in names and _is_usable_dns_name(name):
            names.append(name.lower())
    for address in interface_addresses():
        if str(address) not in names:
            names.append(str(address))
    for name in LOOPBACK_NAMES:
        if name not in names:
            names.append(name)
    return names


def _is_usable_dns_name(name: str) -> bool:
    try:
        normalize_dns_name(name)
    except CertificateError:
        return False
    return True


def interface_addresses() -> list[IPAddress]:
    """This host's addresses, without loopback and link-local ones.

    Link-local addresses are left out: an IPv6 one needs a zone (`%eth0`) that no
    SAN can hold, and neither kind is reachable across a router.
    """
    found: list[IPAddress] = []
    candidates = list(_linux_ipv4_addresses()) + list(_linux_ipv6_addresses())
    if not candidates:
        candidates = list(_resolver_addresses())
    for address in candidates:
        if address.is_loopback or address.is_link_local or address.is_unspecified:
            continue
        if address not in found:
            found.append(address)
    return found


def _linux_ipv4_addresses():
    if not sys.platform.startswith("linux"):
        return
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, interface in socket.if_nameindex():
            request = struct.pack("256s", interface.encode()[:15])
            try:
                reply = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
            except OSError:
                continue  # The interface has no IPv4 address.
            yield ipaddress.IPv4Address(reply[20:24])


def _linux_ipv6_addresses():
    try:
        lines = PROC_IF_INET6.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        fields = line.split()
        if fields:
            yield ipaddress.IPv6Address(bytes.fromhex(fields[0]))


def _resolver_addresses():
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError:
        return
    for info in infos:
        yield ipaddress.ip_address(info[4][0].split("%")[0])


def build_name_constraints(values: list[str]) -> tuple[x509.NameConstraints, list[str]]:
    """Build a Name Constraints extension from DNS names and IP ranges.

    `example.com` permits that name and every name under it (RFC 5280 section
    4.2.1.10). `192.168.0.0/16` permits that range; a bare address is a /32 or /128.
    When only DNS names are given, every IP range is excluded, so that the CA
    cannot sign for any address at all. Returns the extension and notes for the user.
    """
    dns_subtrees: list[x509.GeneralName] = []
    ip_subtrees: list[x509.GeneralName] = []
    for value in values:
        text = value.strip()
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            dns_subtrees.append(x509.DNSName(normalize_dns_name(text.lstrip("."))))
        else:
            ip_subtrees.append(x509.IPAddress(network))
    if not dns_subtrees and not ip_subtrees:
        raise CertificateError("A name constraint needs at least one DNS name or IP range.")

    notes = []
    excluded = None
    if not ip_subtrees:
        excluded = [
            x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
            x509.IPAddress(ipaddress.ip_network("::/0")),
        ]
        notes.append(
            "The CA may sign no IP address SANs, because no IP range was given: add "
            "--name-constraint 127.0.0.1 (or a range such as 192.168.0.0/16) to allow some."
        )
    if not dns_subtrees:
        notes.append(
            "DNS names are not constrained, because only IP ranges were given: add "
            "--name-constraint with a domain such as 'registry.local' to limit them."
        )
    permitted = dns_subtrees + ip_subtrees
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded), notes


def describe_constraints(constraints: x509.NameConstraints) -> str:
    """Render the permitted subtrees as `DNS:example.com, IP:10.0.0.0/8`."""
    parts = []
    for name in constraints.permitted_subtrees or []:
        kind = "IP" if isinstance(name, x509.IPAddress) else "DNS"
        parts.append(f"{kind}:{name.value}")
    return ", ".join(parts) or "(none)"


def name_permitted(constraints: x509.NameConstraints, name: str) -> bool:
    """Whether a SAN value passes `constraints`, as Go's crypto/x509 decides."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return _dns_permitted(constraints, name.lower())
    for subtree in constraints.excluded_subtrees or []:
        if isinstance(subtree, x509.IPAddress) and address in subtree.value:
            return False
    permitted = [
        s.value for s in constraints.permitted_subtrees or [] if isinstance(s, x509.IPAddress)
    ]
    return not permitted or any(address in network for network in permitted)


def _dns_permitted(constraints: x509.NameConstraints, name: str) -> bool:
    for subtree in constraints.excluded_subtrees or []:
        if isinstance(subtree, x509.DNSName) and _dns_matches(name, subtree.value):
            return False
    permitted = [
        s.value for s in constraints.permitted_subtrees or [] if isinstance(s, x509.DNSName)
    ]
    return not permitted or any(_dns_matches(name, domain) for domain in permitted)


def _dns_matches(name: str, constraint: str) -> bool:
    # A constraint with a leading dot permits only names below it; without one, the
    # name itself as well (Go's matchDomainConstraint).
    constraint = constraint.lower()
    name = name.removeprefix("*.")
    if constraint.startswith("."):
        return name.endswith(constraint)
    return name == constraint or name.endswith("." + constraint)
