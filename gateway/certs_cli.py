"""`registry-gateway certs ...`: the local CA, leaves, checks, trust export, listing.

Each subcommand parses its options and calls the library modules; the output says
where each file went and when its certificate expires.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway import certcheck, certs, certshow, certstore, export
from gateway.certnames import describe_constraints
from gateway.errors import CertificateError

DEFAULT_DIR = Path("certs")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "certs",
        help="create a local CA, issue certificates, check them, export trust",
        description="Manage the local CA and certificates in --dir (default certs/).",
    )
    commands = parser.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)
    _add_init(commands)
    _add_issue(commands)
    _add_issue_client(commands)
    _add_check(commands)
    _add_export(commands)
    _add_show(commands)


def _dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, metavar="DIR",
        help="folder of the CA and certificates (default certs/)",
    )


def _add_init(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "init",
        help="create the local CA (ca.crt, ca.key)",
        description="Create a local CA whose certificate clients trust.",
    )
    _dir_argument(parser)
    parser.add_argument(
        "--key-type", choices=certs.KEY_TYPES, default=certs.DEFAULT_KEY_TYPE,
        help="CA key algorithm (default ecdsa-p256)",
    )
    parser.add_argument(
        "--name-constraint", action="append", default=[], metavar="NAME",
        help="DNS domain or IP range (CIDR) the CA may sign for; repeat for more",
    )
    parser.add_argument(
        "--days", type=int, default=certs.CA_DAYS, help="CA lifetime in days (default 3650)"
    )
    parser.add_argument(
        "--force", action="store_true",
        help="replace an existing CA, moving its files to a timestamped backup first",
    )
    parser.set_defaults(func=run_init)


def _add_issue(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "issue",
        help="issue the gateway's server certificate (gateway.crt, gateway.key)",
        description=(
            "Issue a server leaf signed by the local CA. With no NAME, the host name, "
            "FQDN, every non-loopback address, localhost, 127.0.0.1 and ::1 are used."
        ),
    )
    _dir_argument(parser)
    parser.add_argument("names", nargs="*", metavar="NAME", help="DNS name or IP address")
    parser.add_argument(
        "--days", type=int, default=certs.LEAF_DAYS, help="lifetime in days (default 397)"
    )
    parser.add_argument(
        "--key-type", choices=certs.KEY_TYPES, default=certs.DEFAULT_KEY_TYPE,
        help="leaf key algorithm (default ecdsa-p256)",
    )
    parser.add_argument(
        "--force", action="store_true",
        help="replace an existing leaf, moving its files to a timestamped backup first",
    )
    parser.set_defaults(func=run_issue)


def _add_issue_client(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "issue-client",
        help="issue a client certificate (client.cert, client.key) for mTLS",
        description="Issue a client certificate pair with the names Docker's certs.d reads.",
    )
    _dir_argument(parser)
    parser.add_argument("name", metavar="NAME", help="client identity, such as its host name")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="folder for client.cert and client.key (default --dir)"
    )
    parser.add_argument(
        "--days", type=int, default=certs.LEAF_DAYS, help="lifetime in days (default 397)"
    )
    parser.add_argument(
        "--force", action="store_true",
        help="replace an existing pair, moving its files to a timestamped backup first",
    )
    parser.set_defaults(func=run_issue_client)


def _print_backups(issued: certstore.Issued) -> None:
    for path in issued.backups:
        print(f"Moved the old file to {str(path)!r}.")


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"Note: {note}")


def run_init(args: argparse.Namespace) -> int:
    issued = certstore.init_ca(
        args.dir, args.key_type, args.name_constraint, days=args.days, force=args.force
    )
    _print_backups(issued)
    if issued.backups:
        _warn_replaced_ca(args.dir)
    expiry = certstore.long_date(issued.cert.not_valid_after_utc)
    print(f"Created a local CA {str(issued.cert_path)!r}, valid until {expiry}.")
    print(f"Its private key is {str(issued.key_path)!r} (mode 0400): keep it on this host.")
    constraints = certstore.ca_constraints(issued.cert)
    if constraints is not None:
        print(
            "The CA carries name constraints, so clients reject any certificate it "
            f"signs outside {describe_constraints(constraints)}, even one made with a "
            "leaked CA key."
        )
    _print_notes(issued.notes)
    print(f"Next, issue the gateway's certificate: registry-gateway certs issue{certstore.dir_option(args.dir)} NAME ...")
    return 0


def _warn_replaced_ca(folder: Path) -> None:
    """Warn that leaves and client trust made for the replaced CA no longer verify."""
    option = certstore.dir_option(folder)
    leaf_path = folder / certs.LEAF_CERT
    names, example = "NAME ...", ""
    try:
        dns_names, addresses = certs.san_names(certs.load_certs(leaf_path)[0])
    except (OSError, CertificateError):
        pass  # No readable leaf, so the command keeps the NAME placeholder.
    else:
        names = " ".join([*dns_names, *addresses]) or names
        example = f" (such as {str(leaf_path)!r})"
    print(
        f"Warning: The old CA was replaced, so every leaf it issued{example} and the "
        "trust each client installed for it are now stale. Clients that trust the new "
        "CA reject the old leaves, and clients that still trust the old CA reject the "
        f"new ones. Re-issue the leaf with: registry-gateway certs issue{option} "
        f"{names} --force. Then re-export the new CA to each client with: "
        f"registry-gateway certs export{option} --host HOST:PORT --for CLIENT --install"
    )


def run_issue(args: argparse.Namespace) -> int:
    issued = certstore.issue_server(
        args.dir, args.names, days=args.days, key_type=args.key_type, force=args.force
    )
    _print_backups(issued)
    _print_notes(issued.notes)
    expiry = certstore.long_date(issued.cert.not_valid_after_utc)
    print(f"Issued {str(issued.cert_path)!r} for {', '.join(issued.names)}, valid until {expiry}.")
    print(f"Its private key is {str(issued.key_path)!r} (mode 0600).")
    # --certs-dir, not --cert and --key: only then does serve know the CA, so it
    # prints the fingerprint and serves the CA at /_gateway/ca.crt for `trust`.
    print(
        f"Serve it with: registry-gateway serve --certs-dir {args.dir} --name {issued.names[0]}"
    )
    return 0


def run_issue_client(args: argparse.Namespace) -> int:
    issued = certstore.issue_client(
        args.dir, args.name, days=args.days, out=args.out, force=args.force
    )
    _print_backups(issued)
    _print_notes(issued.notes)
    expiry = certstore.long_date(issued.cert.not_valid_after_utc)
    print(f"Issued the client certificate {str(issued.cert_path)!r} for {issued.names[0]}, valid until {expiry}.")
    print(f"Its private key is {str(issued.key_path)!r} (mode 0600).")
    print(
        "Copy both into the client's certs.d/HOST:PORT/ folder, next to ca.crt; Docker "
        "reads *.cert with the .key of the same name as a client pair."
    )
    return 0


# The exit status of `certs check --strict` for warnings without errors. Without
# --strict, warnings exit 0, as they do for `nginx -t` (1.22) and `haproxy -c`
# (2.6), so a deployment script stops only for a certificate that clients reject.
# Status 1 is for errors and 2 for argparse's usage errors.
WARNINGS_STATUS = 3


def _add_check(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "check",
        help="find what Go clients will reject in a certificate",
        description=(
            "Check a certificate chain file the way Go registry clients judge it. With "
            "no --cert, check the gateway's own certificate in --dir."
        ),
        epilog=(
            "Exit status: 0 when there are no errors, even with warnings (such as a "
            "certificate that expires within 30 days); 1 when there is an error, "
            "meaning a client will reject the certificate, or a file given cannot be "
            f"read; 2 for a usage error; {WARNINGS_STATUS} with --strict when there "
            "are warnings but no errors."
        ),
    )
    _dir_argument(parser)
    parser.add_argument("--cert", type=Path, metavar="FILE", help="PEM chain file, leaf first")
    parser.add_argument("--key", type=Path, metavar="FILE", help="PEM private key of --cert")
    parser.add_argument(
        "--ca", type=Path, metavar="FILE",
        help="root CA file clients trust (default: --dir's ca.crt for its own "
        "certificate, else the system store)",
    )
    parser.add_argument(
        "--name", action="append", default=[], metavar="HOST[:PORT]",
        help="name or address clients connect to; repeat for more",
    )
    parser.add_argument(
        "--strict", action="store_true",
        help=f"exit {WARNINGS_STATUS} when there are warnings but no errors (default: exit 0)",
    )
    parser.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    cert, key, ca = certcheck.resolve_paths(args.dir, args.cert, args.key, args.ca)
    report = certcheck.check_certificate(cert, key, ca, args.name, folder=args.dir)
    for finding in report.findings:
        print(finding)
    _print_notes(report.notes)
    if report.findings:
        errors = sum(1 for finding in report.findings if finding.level == "Error")
        warnings = len(report.findings) - errors
        print(
            f"Found {_count(errors, 'error')} and {_count(warnings, 'warning')} in {str(cert)!r}."
        )
        if errors:
            return 1
        return WARNINGS_STATUS if args.strict else 0
    root = report.root.subject.rfc4514_string() if report.root is not None else "?"
    print(f"No problems found in {str(cert)!r}; it chains to {root!r}.")
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _add_export(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="write the CA where each client reads it for a registry",
        description=(
            "Show, or write, the files that make a client trust the CA for HOST:PORT. "
            "Without --out or --install, only print the paths, contents and commands."
        ),
    )
    _dir_argument(parser)
    parser.add_argument(
        "--host", required=True, metavar="HOST[:PORT]",
        help="the registry as image references name it, such as registry.local:5443",
    )
    parser.add_argument(
        "--for", dest="clients", action="append", required=True, choices=export.CLIENTS,
        metavar="CLIENT", help=f"client layout; repeat for more: {', '.join(export.CLIENTS)}",
    )
    parser.add_argument("--ca", type=Path, metavar="FILE", help="CA certificate (default DIR/ca.crt)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--out", type=Path, metavar="DIR",
        help="write a tree under DIR that mirrors the target paths, to copy elsewhere",
    )
    target.add_argument("--install", action="store_true", help="write the real paths on this host")
    parser.add_argument(
        "--force", action="store_true",
        help="replace existing different files, moving them to a timestamped backup first",
    )
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    _host, port, authority = export.parse_authority(args.host)
    ca_path = args.ca or args.dir / certs.CA_CERT
    chain = export.load_ca_for_export(ca_path)
    plans = [
        export.with_ca_file(export.plan_export(client, authority, chain), ca_path)
        for client in dict.fromkeys(args.clients)
    ]
    for message in export.export_warnings(chain, authority, port):
        print(f"Warning: {message}")
    root = args.out
    if root is None and args.install:
        root = Path("/")
    if root is not None and args.install:
        plans = [export.for_this_host(plan) for plan in plans]
    for plan in plans:
        if root is None:
            _print_plan(plan)
        else:
            _write_plan(plan, root, args.force)
    return 0


def _print_plan(plan: export.TrustPlan) -> None:
    print(f"{plan.title} reads the CA for {plan.authority} from:")
    for trust_file in plan.files:
        print(f"  {trust_file.target}")
        if trust_file.shared:
            for line in trust_file.content.decode().splitlines():
                print(f"      {line}")
    _print_commands(plan)


def _write_plan(plan: export.TrustPlan, root: Path, force: bool) -> None:
    print(f"{plan.title}, for {plan.authority}:")
    for item in export.write_plan(plan, root, force):
        if item.backup is not None:
            print(f"  Moved the old file to {str(item.backup)!r}.")
        verb = "Unchanged" if item.unchanged else "Wrote"
        shown = f" (for {item.target})" if str(item.path) != str(item.target) else ""
        print(f"  {verb} {str(item.path)!r}{shown}")
    _print_commands(plan)


def _print_commands(plan: export.TrustPlan) -> None:
    for command in plan.commands:
        print(f"  Then run: {command}")
    for note in plan.notes:
        print(f"  Note: {note}")


def _add_show(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "show",
        help="list the certificates and keys in --dir",
        description="List each certificate with its SANs, SHA-256 fingerprint and dates.",
    )
    _dir_argument(parser)
    parser.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    described = certshow.describe_folder(args.dir)
    if not described:
        print(
            f"The folder {str(args.dir)!r} contains no certificates or keys. Create a local "
            f"CA in it with: registry-gateway certs init{certstore.dir_option(args.dir)}"
        )
    for path, lines in described:
        print(path)
        for line in lines:
            print(f"  {line}" if line else "")
    return 0
