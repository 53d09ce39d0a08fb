"""`registry-gateway serve`: build the configuration, prepare TLS, run until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway import certcheck, certs, eventloop, metrics, tlsreload, workers
from gateway.cli import setup_logging
from gateway.config import (
    Config,
    load,
    parse_listen,
    parse_log_level,
    parse_name,
    parse_upstream,
    validate,
)
from gateway.errors import CertificateError
from gateway.server import Gateway, bind_listener
from gateway.status import TrustInfo, trust_command, warn_if_upstream_down

log = logging.getLogger("gateway.server")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="terminate HTTPS in front of a plain-HTTP registry",
        description=(
            "Serve HTTPS on the listen addresses and forward every request to the "
            "upstream registry. Command-line options override the config file."
        ),
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML config file (see gateway.toml)"
    )
    parser.add_argument(
        "--listen", action="append", metavar="HOST:PORT",
        help="address to accept HTTPS on; repeat for more; IPv6 as [::1]:5443 "
        "(default 127.0.0.1:5443)",
    )
    parser.add_argument(
        "--upstream", metavar="URL", help="the registry, e.g. http://127.0.0.1:5000"
    )
    parser.add_argument(
        "--name", action="append", metavar="NAME",
        help="public name or address clients use; repeat for more; the first is primary",
    )
    parser.add_argument("--cert", type=Path, metavar="FILE", help="PEM certificate chain to serve")
    parser.add_argument("--key", type=Path, metavar="FILE", help="PEM private key of --cert")
    parser.add_argument(
        "--certs-dir", type=Path, metavar="DIR",
        help="where the generated CA and leaf live when --cert is not given (default certs/)",
    )
    parser.add_argument(
        "--htpasswd", type=Path, metavar="FILE",
        help="require HTTP Basic credentials from this bcrypt htpasswd file (htpasswd -B)",
    )
    parser.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Config:
    config = load(args.config)
    if args.listen:
        config.listen = [parse_listen(value) for value in args.listen]
    if args.upstream:
        config.upstream = parse_upstream(args.upstream)
    if args.name:
        config.names = [parse_name(value) for value in args.name]
    if args.cert:
        config.cert = args.cert
    if args.key:
        config.key = args.key
    if args.certs_dir:
        config.certs_dir = args.certs_dir
    if args.log_level:
        config.log_level = parse_log_level(args.log_level)
    if args.htpasswd:
        config.htpasswd = args.htpasswd
    validate(config)
    return config


def prepare_tls(config: Config) -> tuple[Path, Path, Path | None]:
    """Return the certificate, key and CA files, creating a local CA and leaf if needed."""
    if config.cert is not None and config.key is not None:
        check_user_certificate(config)
        return config.cert, config.key, None

    pair = certs.ensure_serving_pair(config.certs_dir, config.certificate_names())
    if pair.created_ca:
        print(f"Created a local CA: {pair.ca_path}")
    if pair.created_leaf:
        print(f"Issued the gateway certificate {pair.cert_path} for {', '.join(pair.names)} ({pair.reason}).")
        for backup in pair.backups:
            print(f"  Moved the previous file to {backup}.")
    return pair.cert_path, pair.key_path, pair.ca_path


def check_user_certificate(config: Config) -> None:
    """Reject a mismatched key and warn about certificate faults that clients reject."""
    assert config.cert is not None and config.key is not None
    chain = certs.load_certs(config.cert)
    key = certs.load_serving_key(config.key)
    leaf = chain[0]
    if not certs.key_matches(leaf, key):
        raise CertificateError(
            f"The key {str(config.key)!r} does not match the certificate "
            f"{str(config.cert)!r}: give the key that was created with this certificate."
        )
    dns_names, addresses = certs.san_names(leaf)
    if not dns_names and not addresses:
        log.warning(
            "The certificate %s has no subjectAltName: Go clients (docker, containerd, "
            "podman) reject it with \"x509: certificate relies on legacy Common Name "
            "field, use SANs instead\". Issue one with names, for example "
            "registry-gateway certs issue %s",
            config.cert,
            " ".join(config.names) or "NAME",
        )
    for name in config.names:
        if not certs.name_covered(leaf, name):
            log.warning(
                "The certificate %s does not cover the configured name %s; clients using "
                "that name will fail with a name mismatch.",
                config.cert,
                name,
            )
    warn_if_ed25519(config, chain)
    if leaf.issuer != leaf.subject and len(chain) == 1:
        # Without the CA file the gateway cannot tell a root issuer from an intermediate.
        log.warning(
            "The certificate file %s contains the leaf without its issuer %r. If that "
            "issuer is an intermediate CA, clients that trust only the root fail with "
            "\"x509: certificate signed by unknown authority\": append the intermediate "
            "certificate to the file. A leaf issued directly by a root CA needs nothing more.",
            config.cert,
            leaf.issuer.rfc4514_string(),
        )


def warn_if_ed25519(config: Config, chain: list) -> None:
    """Log the warning `certs check` gives for each Ed25519 certificate in the chain file."""
    fix = certcheck.reissue_fix(chain[0], config.names, config.certs_dir)
    for index, cert in enumerate(chain):
        if not isinstance(cert.public_key(), ed25519.Ed25519PublicKey):
            continue
        if index == 0:
            label = f"The certificate {config.cert}"
        else:
            label = f"The CA {cert.subject.rfc4514_string()!r} in {config.cert}"
        log.warning("%s", certcheck.ed25519_warning(label, fix))


def print_trust_hint(config: Config, ca_path: Path | None, addresses: list[str]) -> None:
    if ca_path is None:
        return
    port = addresses[0].rsplit(":", 1)[1] if addresses else str(config.listen[0].port)
    host = config.primary_name
    shown = f"[{host}]" if ":" in host else host
    ca = certs.load_certs(ca_path)[0]
    authority = f"{shown}:{port}"
    print(f"Clients must trust the CA {ca_path}.")
    print(f"  CA fingerprint (SHA-256): {certs.fingerprint(ca)}")
    print(f"  On each client, run: {trust_command(authority, ca)}")
    print(f"  or copy it by hand for Docker to /etc/docker/certs.d/{authority}/ca.crt,")
    print(f"  for podman to /etc/containers/certs.d/{authority}/ca.crt.")
    print(f"  Status page and instructions: https://{authority}/_gateway/")


def warn_if_not_ca(path: Path) -> None:
    """Warn when tls.client_ca contains no CA certificate, so that no client certificate can verify."""
    found = certs.load_certs(path)
    if not any(certs.is_ca(cert) for cert in found):
        log.warning(
            "tls.client_ca %s contains no CA certificate (only a leaf), so no client "
            "certificate will verify against it: give the CA that issues client "
            "certificates, e.g. certs/ca.crt for registry-gateway certs issue-client.",
            path,
        )


def raise_file_limit(wanted: int) -> None:
    """Raise the soft open-file limit toward `wanted`, since each connection costs two."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows has no RLIMIT_NOFILE.
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.debug("Raised the open-file limit from %d to %d", soft, target)
    if target < wanted:
        log.warning(
            "The open-file limit is %d, below the %d that limits.max_connections needs; "
            "raise it (ulimit -n, or LimitNOFILE= in a systemd unit).",
            target, wanted,
        )


def check_listeners(config: Config) -> None:
    """Bind each listen address once and close it, so a port in use fails the start early.

    This runs before `prepare_tls`, which may reissue the leaf that a gateway
    already running on the port serves. It binds without SO_REUSEPORT, which
    would let workers join another gateway's listeners on the same port.
    """
    for listener in config.listen:
        if listener.port != 0:
            bind_listener(listener, listen=False).close()


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    setup_logging(config.log_level)
    # Each client connection uses a socket and, while busy, one to the upstream.
    raise_file_limit(2 * config.max_connections + 64)
    check_listeners(config)
    cert, key, ca_path = prepare_tls(config)
    reloader = make_reloader(config, cert, key, ca_path)
    if config.client_ca is not None:
        print(tlsreload.CLIENT_CA_NOTE.format(client_ca=config.client_ca))
        warn_if_not_ca(config.client_ca)
    trust = TrustInfo(leaf_path=cert, ca_path=ca_path)
    if config.workers > 1:

        def announce(addresses: list[str]) -> None:
            print_trust_hint(config, ca_path, addresses)
            for address in addresses:
                print(f"Listening on https://{address} -> {config.upstream}", flush=True)

        def make_worker_reloader(renew: bool) -> tlsreload.CertificateReloader:
            return make_reloader(config, cert, key, ca_path, renew=renew)

        reloader.log_serving(warn_names=False)
        return workers.run(config, make_worker_reloader, announce, trust)
    try:
        return eventloop.run(
            serve_forever(config, reloader.context, trust, reloader, cert), config.event_loop
        )
    except KeyboardInterrupt:  # pragma: no cover - Windows only, see below.
        # On Windows Ctrl-C cancels serve_forever, which drains and stops the
        # gateway; the runner then re-raises the interrupt. The stop was clean.
        return 0


def make_reloader(
    config: Config, cert: Path, key: Path, ca_path: Path | None, renew: bool = True
) -> tlsreload.CertificateReloader:
    """Load the serving pair; renew it only when it comes from the gateway's own CA.

    `renew=False` makes a reloader that only reloads, for the workers that leave
    renewal to one other worker.
    """
    return tlsreload.CertificateReloader(
        cert,
        key,
        config.client_ca,
        names=config.names,
        renew_dir=config.certs_dir if ca_path is not None and renew else None,
        renew_names=config.certificate_names(),
    )


async def serve_forever(
    config: Config,
    context,
    trust: TrustInfo,
    reloader: tlsreload.CertificateReloader | None = None,
    cert: Path | None = None,
) -> int:
    gateway = Gateway(config, context, trust)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if sys.platform != "win32":
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    await gateway.start()
    metrics_listener = await metrics.start(gateway, cert) if cert is not None else None
    if reloader is not None:
        reloader.log_serving(warn_names=False)
        reloader.attach(gateway)
        if sys.platform != "win32":
            loop.add_signal_handler(signal.SIGHUP, reloader.reload_on_signal)
    print_trust_hint(config, trust.ca_path, gateway.addresses)
    for address in gateway.addresses:
        print(f"Listening on https://{address} -> {config.upstream}", flush=True)
    check = loop.create_task(warn_if_upstream_down(gateway.proxy.session, config.upstream))

    try:
        await stop.wait()
    except asyncio.CancelledError:  # pragma: no cover - Ctrl-C on Windows arrives this way.
        pass
    log.info("Stopping: no new connections; waiting up to %g s for transfers", config.drain_timeout)
    check.cancel()
    if reloader is not None:
        await reloader.stop()
    await gateway.stop()
    if metrics_listener is not None:
        await metrics_listener.close()
    log.info("Stopped")
    return 0
