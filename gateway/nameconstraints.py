"""Check a leaf's SANs against the X.509 Name Constraints of the CAs that signed it.

The matching and the message follow `checkNameConstraints` and
`matchDomainConstraint` in Go's crypto/x509/verify.go. A DNS constraint with a
leading dot covers only names below it, and one without the dot covers the name
itself too. A wildcard `*` counts as one label.

NOTE: only DNS and IP subtrees of the leaf's SANs are checked. Go also checks
email and URI subtrees, and the SANs of intermediates.
"""

from __future__ import annotations

import ipaddress

from cryptography import x509

from gateway import certs

GO_NOT_AUTHORIZED = "x509: a root or intermediate certificate is not authorized to sign for this name: "


def violation(leaf: x509.Certificate, cas: list[x509.Certificate]) -> tuple[x509.Certificate, str] | None:
    """Return the first CA whose constraints reject a SAN of `leaf`, with Go's error text."""
    dns_names, addresses = certs.san_names(leaf)
    for ca in cas:
        try:
            constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            continue
        for name in dns_names:
            detail = _dns_detail(constraints, name)
            if detail:
                return ca, GO_NOT_AUTHORIZED + detail
        for address in addresses:
            detail = _ip_detail(constraints, ipaddress.ip_address(address))
            if detail:
                return ca, GO_NOT_AUTHORIZED + detail
    return None


def _dns_detail(constraints: x509.NameConstraints, name: str) -> str | None:
    for subtree in constraints.excluded_subtrees or []:
        if isinstance(subtree, x509.DNSName) and _dns_matches(name, subtree.value):
            return f'DNS name "{name}" is excluded by constraint "{subtree.value}"'
    permitted = [s.value for s in constraints.permitted_subtrees or [] if isinstance(s, x509.DNSName)]
    if permitted and not any(_dns_matches(name, domain) for domain in permitted):
        return f'DNS name "{name}" is not permitted by any constraint'
    return None


def _ip_detail(constraints: x509.NameConstraints, address) -> str | None:
    for subtree in constraints.excluded_subtrees or []:
        if isinstance(subtree, x509.IPAddress) and _ip_matches(address, subtree.value):
            return f'IP address "{address}" is excluded by constraint "{subtree.value}"'
    permitted = [s.value for s in constraints.permitted_subtrees or [] if isinstance(s, x509.IPAddress)]
    if permitted and not any(_ip_matches(address, network) for network in permitted):
        return f'IP address "{address}" is not permitted by any constraint'
    return None


def _ip_matches(address, network) -> bool:
    # An IPv4 address never matches an IPv6 range, as in Go's matchIPConstraint.
    return address.version == network.version and address in network


def _dns_matches(name: str, constraint: str) -> bool:
    if not constraint:
        return True
    name_labels = name.lower().rstrip(".").split(".")[::-1]
    below_only = constraint.startswith(".")
    constraint_labels = constraint.lower().lstrip(".").split(".")[::-1]
    if len(name_labels) < len(constraint_labels):
        return False
    if below_only and len(name_labels) == len(constraint_labels):
        return False
    return name_labels[: len(constraint_labels)] == constraint_labels
