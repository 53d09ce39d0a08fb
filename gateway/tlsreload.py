"""Hot reload and renewal of the gateway's serving certificate.

The accept loop in `server.Gateway` passes `gateway.ssl_context` to the handshake
of each new connection, so replacing that attribute changes only new handshakes:
connections already open, with transfers in flight, keep the context they were
accepted with. A reload builds a complete new context first and swaps it in only
when the new pair loads and is valid. A broken pair (unreadable, key mismatch,
expired) is rejected with an error log, and the old context stays in use.

Triggers: SIGHUP on POSIX, a change of the certificate or key file (checked every
few seconds, which also serves Windows), and renewal. When the gateway owns the
CA (no --cert given) and its leaf has under a third of its lifetime left, it
issues a new leaf from the local CA and reloads it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from gateway import certs, certshow, certstore
from gateway.errors import CertificateError
from gateway.server import make_ssl_context

log = logging.getLogger("gateway.certs")

POLL_INTERVAL = 3.0
# After a failed renewal, wait this long before the next attempt, so that a
# broken CA folder logs one error an hour instead of one per poll.
RENEW_RETRY = 3600.0

# Docker skips certs.d, client pairs included, for insecure registries; 127.0.0.0/8
# always is one, and current moby source adds ::1/128 too. dockerd 20.10 still
# verified a registry on ::1 and sent it the client pair.
CLIENT_CA_NOTE = (
    "Note: Clients must present a certificate signed by {client_ca}. Docker sends no "
    "client certificate to a registry it treats as insecure (listed in "
    "insecure-registries, any 127.0.0.0/8 address, and ::1 in newer releases), so "
    "docker push and pull get 401 there. Use a name that is not insecure, with "
    "client.cert and client.key in certs.d/HOST:PORT/."
)


@dataclass(frozen=True)
class FileState:
    """The inode, size and mtime of a file, compared by each poll to notice a change."""

    inode: int
    size: int
    mtime_ns: int


def file_state(path: Path) -> FileState | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return FileState(info.st_ino, info.st_size, info.st_mtime_ns)


class CertificateReloader:
    """Load the serving pair, and swap a new one into the gateway when it changes.

    `renew_dir` is the folder of the gateway's own CA; without it, the leaf is the
    operator's and is never renewed here. `names` are the configured public names,
    each of which a new certificate should cover.
    """

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        client_ca: Path | None = None,
        names: list[str] | None = None,
        renew_dir: Path | None = None,
        renew_names: list[str] | None = None,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self.client_ca = client_ca
        self.names = list(names or [])
        self.renew_dir = renew_dir
        self.renew_names = list(renew_names or self.names)
        self.interval = interval
        self.target = None
        self.reloads = 0
        self._task: asyncio.Task | None = None
        self._failed_state: tuple | None = None
        self._renew_after = 0.0
        self._state = self._files_state()
        self.context, self.leaf = self._build()

    def _files_state(self) -> tuple:
        return file_state(self.cert_path), file_state(self.key_path)

    def _build(self, at: datetime.datetime | None = None) -> tuple[ssl.SSLContext, x509.Certificate]:
        # make_ssl_context raises CertificateError for unreadable files and a key
        # that does not match; the validity check covers an expired new leaf.
        context = make_ssl_context(self.cert_path, self.key_path, self.client_ca)
        leaf = certs.load_certs(self.cert_path)[0]
        at = at or certs.now()
        if not leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc:
            raise CertificateError(
                f"The certificate {str(self.cert_path)!r} is valid only from "
                f"{certstore.long_date(leaf.not_valid_before_utc)} to "
                f"{certstore.long_date(leaf.not_valid_after_utc)}."
            )
        return context, leaf

    def log_serving(self, warn_names: bool = True) -> None:
        """Log the SANs and expiry of the served leaf, and each configured name it misses.

        At start-up `serve` has already warned about the operator's own certificate,
        so it passes `warn_names=False`; a generated leaf always covers the names.
        """
        log.info(
            "Serving the certificate %s: SANs %s; valid until %s",
            self.cert_path,
            certshow.san_text(self.leaf),
            certshow.expiry_text(self.leaf),
        )
        if not warn_names:
            return
        for name in self.names:
            if not certs.name_covered(self.leaf, name):
                log.warning(
                    "The certificate %s does not cover the configured name %s, so "
                    "clients using that name fail with a name mismatch. Issue one "
                    "that covers it: registry-gateway certs issue %s",
                    self.cert_path,
                    name,
                    " ".join(self.names),
                )

    def attach(self, target) -> None:
        """Start serving into `target` (an object with `ssl_context`) and polling the files."""
        self.target = target
        target.ssl_context = self.context
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def reload(self, reason: str) -> bool:
        """Load the pair from disk and swap it in; keep the old one if the new one is broken."""
        state = self._files_state()
        try:
            context, leaf = self._build()
        except CertificateError as exc:
            self._failed_state = state
            log.error(
                "Rejected the new certificate pair %s / %s (%s): %s Still serving the "
                "previous certificate, which is valid until %s.",
                self.cert_path,
                self.key_path,
                reason,
                exc,
                certstore.long_date(self.leaf.not_valid_after_utc),
            )
            return False
        self.context, self.leaf, self._state = context, leaf, state
        self._failed_state = None
        if self.target is not None:
            self.target.ssl_context = context
        self.reloads += 1
        log.info("Reloaded the certificate (%s); new handshakes use it.", reason)
        self.log_serving()
        return True

    def reload_on_signal(self) -> None:
        self.reload("SIGHUP")

    def check(self, at: datetime.datetime | None = None) -> None:
        """Run one poll: renew when due, then reload when a file changed since the last load."""
        due = self.renew_dir is not None and certs.leaf_needs_renewal(self.leaf, at)
        if due and time.monotonic() >= self._renew_after:
            if not self.renew():
                self._renew_after = time.monotonic() + RENEW_RETRY
            return
        state = self._files_state()
        if state != self._state and state != self._failed_state:
            self.reload("the certificate or key file changed")

    def renew(self) -> bool:
        """Issue a new leaf from the gateway's own CA for the same names, and reload it."""
        assert self.renew_dir is not None
        dns_names, addresses = certs.san_names(self.leaf)
        names = list(dict.fromkeys([*self.renew_names, *dns_names, *addresses]))
        try:
            ca_chain, ca_key = certstore.load_ca(self.renew_dir)
            key = certs.generate_key()
            leaf = certs.issue_leaf(ca_chain[0], ca_key, key, names)
            # NOTE: the pair is two separate renames. Another worker that polls
            # between them rejects the pair once and loads it at its next poll.
            # A process killed between them leaves a mismatched pair, which a
            # replacement worker fails to load until serve restarts and reissues it.
            certs.write_key(self.key_path, key)
            certs.write_certs(self.cert_path, [leaf])
        except (CertificateError, OSError) as exc:
            log.error(
                "Renewing the certificate %s failed: %s. Still serving the current one, "
                "which is valid until %s.",
                self.cert_path,
                exc,
                certstore.long_date(self.leaf.not_valid_after_utc),
            )
            return False
        log.info("Renewed the certificate %s: under a third of its lifetime was left.", self.cert_path)
        return self.reload("renewal")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()
