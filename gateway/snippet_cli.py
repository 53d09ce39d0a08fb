"""`registry-gateway snippet CLIENT HOST[:PORT]`: the config that makes a client reach a registry.

Standard output carries only the main file's content, so `> file` works;
notes, warnings and the reload steps go to standard error. `--json` prints
the files and commands as data instead, or an `error` object; docs/snippet.md
lists the fields.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from gateway.client_paths import CLIENTS, PLATFORMS
from gateway.errors import GatewayError
from gateway.snippets import (
    FileError,
    Request,
    Result,
    image_registry,
    parse_registry,
    write_all,
)

MODULES = {client: f"gateway.snippet_{client}" for client in CLIENTS}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "snippet",
        help="print or merge the config that lets a client use a registry",
        description=(
            "Print the config lines that make CLIENT trust the registry HOST[:PORT] "
            "(--ca) or reach it without TLS checks (--insecure), merged into the "
            "client's existing file with --merge and written with --write."
        ),
    )
    parser.add_argument("client", choices=CLIENTS, metavar="CLIENT", help=", ".join(CLIENTS))
    parser.add_argument(
        "registry", metavar="HOST[:PORT]",
        help="the registry exactly as in the image reference, e.g. registry.example:5000",
    )

    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--ca", type=Path, metavar="FILE",
        help="trust this CA certificate (PEM) for the registry; preferred",
    )
    mode.add_argument(
        "--insecure", action="store_true",
        help="allow plain HTTP or unverified TLS for the registry",
    )

    parser.add_argument(
        "--platform", choices=PLATFORMS, default="linux",
        help="where the client runs; sets the default file paths (default linux)",
    )
    parser.add_argument(
        "--merge", nargs="?", const="", metavar="FILE",
        help="merge into this existing file (default: the platform's file) and print "
        "the whole result. With FILE, the CA goes beside FILE: to "
        "DIR/certs.d/HOST:PORT/ca.crt for docker and podman, and to DIR/ca.crt for "
        "containerd, where DIR is FILE's folder (the folder above, for a podman drop-in "
        "in registries.conf.d). The platform's folders are used "
        "only without FILE or when FILE is in the platform's own folder",
    )
    parser.add_argument(
        "--write", action="store_true",
        help="write the result in place, after a timestamped backup, and with --ca "
        "the CA file where the output names it",
    )

    parser.add_argument(
        "--repair", action="store_true",
        help="docker: repair a daemon.json that is not valid JSON (trailing commas, "
        "an appended object) and print the result to check",
    )
    parser.add_argument(
        "--convert", action="store_true",
        help="podman: allow --write to replace a v1 registries.conf with its v2 form",
    )
    parser.add_argument(
        "--image", metavar="REF",
        help="the image reference in use; warns when its registry differs from HOST[:PORT]",
    )
    parser.add_argument(
        "--containerd-config", type=Path, metavar="FILE",
        help="containerd: read this config.toml to check config_path and its version",
    )

    parser.add_argument(
        "--json", action="store_true", help="print the files and commands as JSON"
    )

    parser.set_defaults(func=run)


def build_request(args: argparse.Namespace) -> Request:
    if args.ca is None and not args.insecure:
        raise GatewayError(
            f"Choose how {args.client} should reach {args.registry}: --ca FILE to trust "
            "the CA that signed the registry's certificate (preferred, e.g. the "
            "gateway's certs/ca.crt), or --insecure for a plain-HTTP registry. "
            f"registry-gateway probe {args.registry} tells which one it needs."
        )
    registry, notes = parse_registry(args.registry, allow_cidr=args.client == "docker")
    if registry.network is not None and args.ca is not None:
        raise GatewayError(
            f"A CA is trusted per registry name, not for the range {args.registry!r}: "
            "give the registry as HOST:PORT."
        )
    return Request(
        client=args.client,
        registry=registry,
        insecure=args.insecure,
        ca=args.ca,
        platform=args.platform,
        merge=Path(args.merge) if args.merge else None,
        merge_requested=args.merge is not None,
        write=args.write,
        repair=args.repair,
        convert=args.convert,
        image=args.image,
        containerd_config=args.containerd_config,
        name_notes=notes,
    )


def build(request: Request) -> Result:
    module = importlib.import_module(MODULES[request.client])
    result = Result()
    for note in request.name_notes:
        result.note(note)
    built = module.build(request)
    built.messages[:0] = result.messages
    if request.image:
        _check_image(request, built)
    return built


def _check_image(request: Request, result: Result) -> None:
    used = image_registry(request.image)
    if used != request.registry.name:
        result.warn(
            f"The image {request.image!r} is on {used!r}, but the entry is "
            f"{request.registry.name!r}: clients match host and port exactly, so give "
            f"{used} as the registry."
        )


def run(args: argparse.Namespace) -> int:
    try:
        request = build_request(args)
        result = build(request)
        if request.write:
            write_all(result)
    except GatewayError as exc:
        # With --json, standard output still carries one JSON object. The `Error:`
        # line still goes to standard error, and the exit status stays 1.
        if args.json:
            print(json.dumps({"error": error_data(exc)}, indent=2))
        raise
    if args.json:
        print(json.dumps(as_data(request, result), indent=2))
        return 0
    print_result(request, result)
    return 0


def print_result(request: Request, result: Result) -> None:
    primary = result.files[0] if result.files else None
    if primary is not None:
        sys.stdout.write(primary.content)
        if primary.content and not primary.content.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    for message in result.messages:
        print(message.line(), file=sys.stderr)
    for output in result.files[1:]:
        if output.target is not None:
            continue  # --write puts this file in place, and the loop below reports it.
        if output.copy_from is not None:
            print(f"Note: also copy {output.copy_from} to {output.path}.", file=sys.stderr)
        else:
            print(f"Note: also write {output.path}:", file=sys.stderr)
            print(output.content.rstrip("\n"), file=sys.stderr)
    for output in result.files:
        if output.written:
            backup = f" (the previous file is {output.backup})" if output.backup else ""
            print(f"Note: wrote {output.target}{backup}.", file=sys.stderr)
        elif request.write and output.target is not None and not output.changed:
            print(f"Note: {output.target} already has this content; left unchanged.", file=sys.stderr)
    for command in result.commands:
        print(f"Note: then run: {command}", file=sys.stderr)


def error_data(exc: GatewayError) -> dict:
    """Return the `--json` error object: file, line and column (null when unknown) and message."""
    if isinstance(exc, FileError):
        return exc.to_json()
    return {"file": None, "line": None, "column": None, "message": str(exc)}


def as_data(request: Request, result: Result) -> dict:
    return {
        "client": request.client,
        "registry": request.registry.name,
        "mode": "insecure" if request.insecure else "ca",
        "platform": request.platform,
        "files": [
            {
                "path": output.path,
                "content": output.content,
                "changed": output.changed,
                "written": output.written,
                "backup": str(output.backup) if output.backup else None,
            }
            for output in result.files
        ],
        "commands": result.commands,
        "messages": [{"level": m.level, "text": m.text} for m in result.messages],
    }
