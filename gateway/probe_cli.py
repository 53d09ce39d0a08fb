"""`registry-gateway probe`: the subcommand, its options and its text and JSON output.

Exit status: 0 when every selected client would succeed, 1 when one would fail
(or for a user error), 2 for a usage error (argparse), an invalid HOST[:PORT]
included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway import probe
from gateway.errors import GatewayError

DOCKER_CERTS_DIR = Path("/etc/docker/certs.d")
CLIENT_CHOICES = ("docker", "containerd", "podman", "all")
CLIENT_LABELS = {
    "docker": "docker",
    "containerd": "containerd/ctr",
    "podman": "podman/skopeo",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="find out what listens on a registry port and what each client will print",
        description=(
            "Connect to HOST[:PORT] the way docker, containerd and podman do, classify "
            "what answers, and print each client's exact error and the fix."
        ),
        epilog=(
            "Exit status: 0 when every selected client (--client) would succeed; 1 when "
            "any selected client would fail, a finding is an Error, the --explain text "
            "is not recognised or names an unreachable host, a --local audit finds an "
            "error, or a file given cannot be used; 2 for a usage error, such as an "
            "invalid HOST[:PORT] or an empty --explain."
        ),
    )
    parser.add_argument(
        "target",
        nargs="?",
        metavar="HOST[:PORT]",
        help="the registry as written in the image reference",
    )
    parser.add_argument(
        "--ca",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="a CA certificate the clients trust; repeat for more",
    )
    parser.add_argument(
        "--cert-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"certs.d root whose HOST:PORT folder holds trusted *.crt files (default {DOCKER_CERTS_DIR})",
    )
    parser.add_argument(
        "--client",
        choices=CLIENT_CHOICES,
        default="all",
        help="which client's outcome to show (default all)",
    )
    parser.add_argument(
        "--image",
        metavar="REPO[:TAG]",
        help="the image the predicted messages name (default <repo>:<tag>)",
    )
    parser.add_argument(
        "--push-check",
        action="store_true",
        help="also start and cancel a blob upload in --image's repository and check "
        "the manifest's digest header (needs push access without credentials)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="timeout of each step, in seconds (default 5)",
    )
    parser.add_argument(
        "--no-system-trust",
        action="store_true",
        help="ignore the system CA store, as a minimal client image would",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the report as one JSON object (fields in docs/probe.md)",
    )
    parser.add_argument(
        "--explain",
        metavar="TEXT",
        help="recognise a pasted client error ('-' reads standard input), then probe its host",
    )
    parser.add_argument(
        "--local",
        metavar="HOST[:PORT]",
        help="audit this machine's docker config for the registry instead of connecting",
    )
    parser.add_argument(
        "--daemon-json",
        type=Path,
        metavar="FILE",
        help="daemon.json for --local (default: this platform's)",
    )
    parser.add_argument(
        "--hosts-file",
        type=Path,
        metavar="FILE",
        help="hosts file for --local (default /etc/hosts)",
    )
    parser.add_argument(
        "--containerd-config",
        type=Path,
        metavar="FILE",
        help="containerd config.toml for --local (default /etc/containerd/config.toml)",
    )
    parser.add_argument(
        "--registries-conf",
        type=Path,
        metavar="FILE",
        help="podman registries.conf for --local "
        "(default $CONTAINERS_REGISTRIES_CONF or /etc/containers/registries.conf)",
    )
    parser.set_defaults(func=run, parser=parser)


def options_from(args: argparse.Namespace) -> probe.Options:
    cert_dir = args.cert_dir if args.cert_dir is not None else DOCKER_CERTS_DIR
    repository, tag = "<repo>", "<tag>"
    if args.image:
        repository, _, tag = args.image.partition(":")
        tag = tag or "latest"
    return probe.Options(
        repository=repository,
        tag=tag,
        ca_files=list(args.ca),
        cert_dir=cert_dir,
        client=args.client,
        timeout=args.timeout,
        system_trust=not args.no_system_trust,
        push_check=args.push_check,
    )


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        args.parser.error("--timeout must be a positive number of seconds")
    if args.explain is not None:
        from gateway import probe_explain

        text = sys.stdin.read() if args.explain == "-" else args.explain
        if not text.strip():
            where = "standard input is empty" if args.explain == "-" else "the text is empty"
            args.parser.error(
                f"--explain needs a client's error message, but {where}: paste the "
                "message, or give '-' and pipe it in"
            )
        return probe_explain.run(text, args, options_from(args))
    if args.local is not None:
        return run_local(args)
    if not args.target:
        args.parser.error(
            "give HOST[:PORT] to probe, or --explain TEXT, or --local HOST[:PORT]"
        )
    report = probe.run(parse_target_argument(args, args.target), options_from(args))
    emit(report, args.json)
    return 0 if report.ok else 1


def parse_target_argument(args: argparse.Namespace, text: str) -> probe.Target:
    """Parse a HOST[:PORT] argument, exiting with a usage error (status 2) when invalid."""
    try:
        return probe.parse_target(text)
    except GatewayError as exc:
        args.parser.error(str(exc))


def run_local(args: argparse.Namespace) -> int:
    from gateway import probe_local

    target = parse_target_argument(args, args.local)
    paths = probe_local.AuditPaths(
        daemon_json=args.daemon_json,
        certs_dir=args.cert_dir,
        hosts_file=args.hosts_file,
        containerd_config=args.containerd_config,
        registries_conf=args.registries_conf,
    )
    result = probe_local.audit(target, paths)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(probe_local.render(result))
    return 0 if result.ok else 1


def emit(report: probe.Report, as_json: bool, extra: dict | None = None) -> None:
    if as_json:
        data = report.to_json()
        if extra:
            data.update(extra)
        print(json.dumps(data, indent=2))
    else:
        print(render(report))


def render(report: probe.Report) -> str:
    """Format the report for people: verdict, evidence by step, each client's line, fixes."""
    lines = [f"{report.target.authority}: {headline(report)}", f"  {report.summary}", "", "Steps:"]
    for step in report.steps:
        lines.append(
            f"  {step.name:<10} {step.status:<7} {step.duration_ms:>7.1f} ms  {step.detail}"
        )
    leaf = (report.evidence.get("certificates") or [None])[0]
    if leaf:
        lines += [
            "",
            "Certificate:",
            f"  subject {leaf['subject']}",
            f"  issuer  {leaf['issuer']}",
        ]
        dns_sans = ", ".join(leaf["dns_sans"]) or "none"
        ip_sans = ", ".join(leaf["ip_sans"]) or "none"
        if not leaf["has_san_extension"]:
            dns_sans = ip_sans = "none (no SAN extension)"
        lines.append(f"  SANs    DNS: {dns_sans}; IP: {ip_sans}")
        lines.append(
            f"  valid   {leaf['not_before']} to {leaf['not_after']} (clock {report.evidence.get('clock_utc')})"
        )
        lines.append(
            f"  sent    {len(report.evidence['certificates'])} certificate(s); trusted: {', '.join(report.evidence.get('trust_sources', [])) or 'none'}"
        )
    lines += ["", "What each client prints:"]
    for prediction in report.clients:
        label = CLIENT_LABELS[prediction.client]
        mark = " (unverified wording)" if prediction.unverified else ""
        lines.append(f"  {label}: {prediction.message}{mark}")
        if prediction.push_message:
            lines.append(f"  docker push: {prediction.push_message}{mark}")
        if prediction.rule:
            lines.append(f"    because {prediction.rule}.")
    for finding in report.findings:
        lines.append(f"{finding.level}: {finding.text}")
    if report.fixes:
        lines += ["", "Fix, best first:"]
        for number, fix in enumerate(report.fixes, 1):
            lines.append(f"  {number}. [{fix.side}] {fix.text}")
            if fix.command:
                lines.append(f"       {fix.command}")
    return "\n".join(lines)


def headline(report: probe.Report) -> str:
    """Return the verdict title, naming the clients that fail when the verdict is OK."""
    title = probe.VERDICT_TITLES[report.verdict]
    failing = [c for c in report.clients if not c.ok]
    if report.verdict != probe.TLS_OK or not failing:
        return title
    passing = [CLIENT_LABELS[c.client] for c in report.clients if c.ok]
    reasons = "; ".join(
        f"{CLIENT_LABELS[c.client]} would fail, because {c.rule or c.message}"
        for c in failing
    )
    if not passing:
        return f"{title} on the wire, but {reasons}"
    return f"{title} for {' and '.join(passing)}; {reasons}"


def verdict_line(address: str, ca_files: list[Path] | None = None) -> str:
    """Probe `address` and return `probe ADDRESS: VERDICT`, the one line the demo prints."""
    options = probe.Options(
        ca_files=list(ca_files or []), cert_dir=None, client="podman"
    )
    report = probe.run(probe.parse_target(address), options)
    return f"probe {report.target.authority}: {probe.VERDICT_TITLES[report.verdict]}"
