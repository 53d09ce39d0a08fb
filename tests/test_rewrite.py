"""URL rewriting rules, without sockets."""

from __future__ import annotations

import pytest
from yarl import URL

from gateway.rewrite import MalformedURL, Rewriter

ORIGIN = "https://registry.example:5443"
QUERY = "?_state=AbC%2B_x%3D"


@pytest.fixture
def rewriter():
    return Rewriter([URL("http://127.0.0.1:5000"), URL("http://127.0.0.1:5001")], ["registry.example", "localhost"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:5000/v2/x" + QUERY, ORIGIN + "/v2/x" + QUERY),
        ("http://127.0.0.1:5001/auth", ORIGIN + "/auth"),
        ("https://registry.example/v2/x" + QUERY, ORIGIN + "/v2/x" + QUERY),
        ("http://REGISTRY.example:80/v2/x", ORIGIN + "/v2/x"),
        ("//127.0.0.1:5000/v2/y", ORIGIN + "/v2/y"),
        ("http://127.0.0.1:5000", ORIGIN + "/"),
        ("/v2/x" + QUERY, "/v2/x" + QUERY),
        ("https://s3.example.net/b?X-Amz-Signature=a%2Fb", "https://s3.example.net/b?X-Amz-Signature=a%2Fb"),
        ("http://127.0.0.1:5002/v2/x", "http://127.0.0.1:5002/v2/x"),
    ],
)
def test_url_rules(rewriter, value, expected):
    assert rewriter.url(value, ORIGIN) == expected


@pytest.mark.parametrize("value", ["http://[::1/v2", "http://h:99999/x", "mailto:a@b", "http:///nohost"])
def test_malformed(rewriter, value):
    with pytest.raises(MalformedURL):
        rewriter.url(value, ORIGIN)


def test_link_header(rewriter):
    value = '<http://127.0.0.1:5000/v2/_catalog?last=a&n=1>; rel="next"'
    assert rewriter.link(value, ORIGIN) == f'<{ORIGIN}/v2/_catalog?last=a&n=1>; rel="next"'
    assert rewriter.link('</v2/_catalog?n=1>; rel="next"', ORIGIN) == '</v2/_catalog?n=1>; rel="next"'


def test_realm(rewriter):
    value = 'Bearer realm="http://127.0.0.1:5001/auth",service="registry",scope="repository:a:pull"'
    assert rewriter.www_authenticate(value, ORIGIN) == (
        f'Bearer realm="{ORIGIN}/auth",service="registry",scope="repository:a:pull"'
    )
    assert rewriter.www_authenticate('Basic realm="x"', ORIGIN) == 'Basic realm="x"'
    foreign = 'Bearer realm="https://auth.example.com/token",service="r"'
    assert rewriter.www_authenticate(foreign, ORIGIN) == foreign
