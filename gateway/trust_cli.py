"""`registry-gateway trust HOST:PORT`: make this machine's clients trust a gateway's CA.

Exit status 0 means the CA was written (or shown) and every chosen client would
now succeed. Status 1 means a check failed and nothing was written, or a client
would still fail after writing. Status 2 is a usage error (argparse).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from gateway import certs, export, probe, trust
from gateway.client_paths import PLATFORMS
from gateway.errors import GatewayError

CLIENT_CHOICES = (*trust.CLIENTS, "all")
LABELS = {"docker": "docker", "containerd": "containerd/ctr", "podman": "podman/skopeo"}
Plans = list[tuple[str, export.TrustPlan]]


def default_platform() -> str:
    if sys.platform == "win32":
        return "windows"
    if sys.platform == "darwin":
        return "desktop"
    return "linux"


def _fingerprint(text: str) -> str:
    try:
        return trust.normalize_fingerprint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trust",
        help="fetch a gateway's CA, check its fingerprint and install it for the clients here",
        description=(
            "Connect to HOST:PORT, fetch its CA from /_gateway/ca.crt, check it against "
            "--fingerprint and against the certificate the server presents, write it "
            "where the chosen clients read it for HOST:PORT, then probe HOST:PORT with "
            "the new trust. Without --install or --out, only show what would be written."
        ),
    )

    parser.add_argument(
        "target", metavar="HOST:PORT", help="the registry as image references name it"
    )
    parser.add_argument(
        "--fingerprint", type=_fingerprint, metavar="SHA256",
        help="the CA's SHA-256 fingerprint as registry-gateway serve prints it "
        "(hex, colons optional); nothing is written unless it matches",
    )
    parser.add_argument(
        "--for", dest="client", choices=CLIENT_CHOICES, default="docker",
        help="which client to set up (default docker)",
    )
    parser.add_argument(
        "--platform", choices=PLATFORMS, default=default_platform(),
        help="where the clients run (default: this machine's, "
        f"{default_platform()})",
    )

    target = parser.add_mutually_exclusive_group()
    target.add_argument("--install", action="store_true", help="write the real paths on this host")
    target.add_argument(
        "--out", type=Path, metavar="DIR",
        help="write a tree under DIR that mirrors the real paths, to copy elsewhere",
    )
    parser.add_argument(
        "--root", type=Path, metavar="DIR",
        help="with --install: install under DIR instead of /, for a chroot or a test",
    )

    parser.add_argument(
        "--yes", action="store_true",
        help="trust the CA without asking when no --fingerprint is given",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS",
        help="timeout of the connection and of each probe step, in seconds (default 10)",
    )
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.root is not None and not args.install:
        args.parser.error("--root goes with --install")
    if args.timeout <= 0:
        args.parser.error("--timeout must be a positive number of seconds")
    target = probe.parse_target(args.target)
    host, authority = target.host, target.reference
    port = target.port if target.port_given else None
    chosen = list(trust.CLIENTS) if args.client == "all" else [args.client]
    root = _root(args)

    fetched = trust.fetch(host, target.port, authority, args.timeout)
    _print_fetched(fetched)
    if args.fingerprint is not None:
        trust.check_fingerprint(fetched, args.fingerprint)
        print("The fingerprint matches --fingerprint.")
    else:
        print(f"Note: {_first_use_note(authority)}")
    trust.check_presented(fetched, host)
    for message in trust.warnings_for(fetched, port):
        print(f"Warning: {message}")

    plans, skipped = trust.build_plans(chosen, args.platform, authority, fetched.ca)
    for message in skipped:
        print(f"Note: {message}")
    if not plans:
        raise GatewayError(
            f"No chosen client has a CA layout for --platform {args.platform}, so "
            "nothing was written: choose another --for or --platform."
        )
    if root is None:
        return _dry_run(fetched, plans, target, args.timeout)
    fingerprint = trust.colon_form(args.fingerprint) if args.fingerprint else None
    trust.check_shared_files([plan for _, plan in plans], root, fingerprint)
    if args.fingerprint is None and not args.yes:
        _confirm(fetched)
    ca_files = _write(plans, root, args.install)
    return _report(plans, ca_files, target, args.timeout)


def _print_fetched(fetched: trust.Fetched) -> None:
    leaf = fetched.chain[0]
    dns_names, addresses = certs.san_names(leaf)
    print(
        f"{fetched.authority} presented {len(fetched.chain)} certificate(s); the leaf "
        f"is for {', '.join([*dns_names, *addresses]) or 'no SAN'}, issued by "
        f"{leaf.issuer.rfc4514_string()!r}."
    )
    for note in fetched.notes:
        print(f"Note: {note}")
    kind = "leaf certificate" if fetched.is_leaf else "CA"
    print(f"The {kind} from {fetched.source}: {fetched.ca.subject.rfc4514_string()!r}")
    print(f"  SHA-256 fingerprint: {certs.fingerprint(fetched.ca)}")


def _root(args: argparse.Namespace) -> Path | None:
    if args.out is not None:
        return args.out
    if not args.install:
        return None
    if args.platform == "windows" and args.root is None:
        # NOTE: `export.local_path` maps C:\X to ROOT/C/X, which is right for a
        # tree but not for the live Windows paths, so --install stops here.
        raise GatewayError(
            "Installing Windows paths with --install is not supported: write a tree "
            "with --out DIR, then copy DIR\\C\\ProgramData\\docker\\certs.d\\... to "
            "C:\\ProgramData\\docker\\certs.d\\... on the Windows machine."
        )
    return args.root or Path("/")


def _first_use_note(authority: str) -> str:
    # The status page comes from the server being checked, so a server in the
    # middle would show its own fingerprint there: only the gateway host is proof.
    return (
        "No --fingerprint was given, so this trusts on first use. Compare the "
        "fingerprint above with the one shown on the gateway host itself: the line "
        "registry-gateway serve printed at start-up, or the output of "
        "registry-gateway certs show --dir DIR run there. Do not compare it with the "
        f"status page https://{authority}/_gateway/, because that page comes from the "
        "same server this command connected to."
    )


def _confirm(fetched: trust.Fetched) -> None:
    print(f"Trust it for {fetched.authority}? [y/N] ", end="", flush=True)
    answer = sys.stdin.readline()
    if not sys.stdin.isatty():
        print()  # A terminal echoes the newline of the reply, a pipe does not.
    answer = answer.strip().lower()
    if answer in ("y", "yes"):
        return
    raise GatewayError(
        "The CA was not confirmed, so nothing was written. Rerun with --fingerprint "
        "SHA256 (from the gateway host), or answer y."
    )


def _write(plans: Plans, root: Path, install: bool) -> list[Path]:
    """Write the plans under `root`, print where each file went; return each plan's CA file."""
    if install:
        plans = [(client, export.for_this_host(plan)) for client, plan in plans]
    ca_files = []
    for (_client, plan), written in zip(plans, trust.write([p for _, p in plans], root)):
        print(f"{plan.title}, for {plan.authority}:")
        for item in written:
            real = f" (for {item.target})" if str(item.path) != str(item.target) else ""
            if item.backup is not None:
                print(
                    f"  Replaced {str(item.path)!r}{real}. The old file differed, so it "
                    f"was moved to the backup {str(item.backup)!r}."
                )
                continue
            verb = "Unchanged" if item.unchanged else "Wrote"
            print(f"  {verb} {str(item.path)!r}{real}")
        _print_steps(export.with_ca_file(plan, written[0].path))
        ca_files.append(written[0].path)
    return ca_files


def _print_steps(plan: export.TrustPlan) -> None:
    for command in plan.commands:
        print(f"  Then run: {command}")
    for note in plan.notes:
        print(f"  Note: {note}")


def _dry_run(
    fetched: trust.Fetched,
    plans: Plans,
    target: probe.Target,
    timeout: float,
) -> int:
    for _client, plan in plans:
        print(f"{plan.title} would read the CA for {plan.authority} from:")
        for trust_file in plan.files:
            print(f"  {trust_file.target}")
        _print_steps(export.with_ca_file(plan, plan.files[0].target))
    with tempfile.TemporaryDirectory(prefix="registry-gateway-trust-") as folder:
        ca_file = Path(folder, "ca.crt")
        ca_file.write_bytes(certs.cert_pem(fetched.ca))
        status = _report(plans, [ca_file] * len(plans), target, timeout, written=False)
    print(
        "Nothing was written: add --install to write these paths on this host, or "
        "--out DIR for a tree to copy."
    )
    return status


def _report(
    plans: Plans,
    ca_files: list[Path],
    target: probe.Target,
    timeout: float,
    written: bool = True,
) -> int:
    print(f"Probing {target.authority} with the new trust:")
    failed = 0
    for (client, _plan), ca_file in zip(plans, ca_files):
        outcome = trust.verify(target, client, ca_file, timeout)
        if outcome.ok:
            print(f"  {LABELS[client]}: would succeed")
        else:
            failed += 1
            print(f"  {LABELS[client]}: would still fail: {outcome.message}")
    if failed:
        done = "The CA was written, but" if written else "Even with this CA,"
        print(
            f"Error: {done} {failed} client(s) would still fail. For the causes and "
            f"fixes, run: registry-gateway probe {target.reference}",
            file=sys.stderr,
        )
        return 1
    return 0
