"""Rewriting what the registry says about its own address.

The registry builds absolute URLs (`Location` of an upload, `Link` of a catalog
page, the `realm` of a token challenge) from the request it received (source:
distribution `registry/api/v2/urls.go`, NewURLBuilderFromRequest). Behind a proxy
that URL can name the upstream's own address, drop the public port, or say `http`.
The client then sends its next request somewhere it cannot reach.

The rule: an absolute URL whose authority is an upstream's, or one of the public
names (whatever the scheme and port), is given the public `https://host:port`
origin the client used; path and query are kept byte for byte. A relative URL is
left alone, and so is a URL on a foreign host, such as a presigned object-storage
redirect, which the client must reach directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from yarl import URL


class MalformedURL(ValueError):
    """An upstream header URL that cannot be parsed, so it cannot be passed on safely."""


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_LINK_TARGET = re.compile(r"<([^>]*)>")
_REALM = re.compile(r'(realm\s*=\s*")([^"]*)(")', re.IGNORECASE)


class Rewriter:
    """Rewrites upstream URLs in response headers to the public origin."""

    def __init__(self, upstreams: Iterable[URL], public_names: Iterable[str]):
        self._upstreams = {_authority_key(u.scheme, u.host, u.port) for u in upstreams}
        self._names = {name.lower() for name in public_names}

    def is_ours(self, url: URL) -> bool:
        host = (url.host or "").lower()
        if _authority_key(url.scheme, host, url.port) in self._upstreams:
            return True
        return host in self._names

    def url(self, value: str, origin: str) -> str:
        """Rewrite one URL string; `origin` is `https://host[:port]` without a slash."""
        text = value.strip()
        if not _SCHEME.match(text):
            if text.startswith("//"):
                # A scheme-relative URL names an authority, so it needs the same check.
                return self.url("https:" + text, origin)
            return value
        try:
            url = URL(text, encoded=True)
            host = url.host
            url.port  # noqa: B018 - yarl parses the port lazily; an invalid one raises here.
        except (ValueError, TypeError) as exc:
            raise MalformedURL(f"cannot parse {value!r}: {exc}") from None
        if url.scheme not in ("http", "https") or not host:
            raise MalformedURL(f"cannot parse {value!r}: not an http(s) URL with a host")
        if not self.is_ours(url):
            return value
        return origin + _path_and_query(text)

    def location(self, value: str, origin: str) -> str:
        return self.url(value, origin)

    def link(self, value: str, origin: str) -> str:
        """Rewrite every `<URI>` target in a Link header (RFC 8288)."""
        return _LINK_TARGET.sub(lambda m: f"<{self.url(m.group(1), origin)}>", value)

    def www_authenticate(self, value: str, origin: str) -> str:
        """Rewrite a Bearer challenge's realm when it points at an upstream or our name."""

        def replace(match: re.Match[str]) -> str:
            realm = match.group(2)
            if not _SCHEME.match(realm):
                return match.group(0)  # A Basic realm is a label, not a URL.
            return match.group(1) + self.url(realm, origin) + match.group(3)

        return _REALM.sub(replace, value)


def _authority_key(scheme: str | None, host: str | None, port: int | None) -> tuple[str, int | None]:
    host = (host or "").lower()
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme or "")
    return host, port


def _path_and_query(text: str) -> str:
    """Return everything after the authority, exactly as written."""
    after_scheme = text.split("//", 1)[1] if "//" in text else text
    slash = min(
        (i for i in (after_scheme.find("/"), after_scheme.find("?"), after_scheme.find("#")) if i >= 0),
        default=-1,
    )
    if slash < 0:
        return "/"
    rest = after_scheme[slash:]
    return rest if rest.startswith("/") else "/" + rest
