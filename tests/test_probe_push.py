"""`probe --push-check`: upload Location, body limits, timeouts and the digest header."""

from __future__ import annotations

import hashlib

import pytest
from aiohttp import web

from gateway import certs, lab, probe
from tests import probe_support as support
from tests.probe_support import make_ca, run_probe
from tests.test_probe_servers import server_context

MANIFEST = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
)
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
NGINX_413 = (
    "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    "<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx/1.22.1"
    "</center>\r\n</body>\r\n</html>\r\n"
)


@pytest.fixture(scope="module")
def root_ca():
    return make_ca("Probe Push Root")


@pytest.fixture(scope="module")
def pushed_image(registry, tmp_path_factory):
    """rig/push:v1 in the session registry, pushed by skopeo over plain HTTP."""
    layout = tmp_path_factory.mktemp("push-image")
    lab.build_oci_layout(layout, layer_sizes=(1024,), seed=7)
    result = lab.skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{layout}:v1",
        f"docker://{registry.address}/rig/push:v1",
    )
    assert result.returncode == 0, result.stderr
    return "rig/push:v1"


def errors(report: probe.Report) -> list[str]:
    return [f.text for f in report.findings if f.level == "Error"]


def step(report: probe.Report, name: str) -> probe.Step:
    return next(s for s in report.steps if s.name == name)


def test_push_check_real_registry(registry, pushed_image):
    """The distribution registry on plain HTTP: upload and digest header both pass."""
    report = run_probe(registry.address, image=pushed_image, push_check=True)
    assert step(report, "upload").status == "ok"
    assert report.evidence["upload"]["chunk_status"] == 202
    assert step(report, "manifest").status == "ok"
    assert (
        report.evidence["manifest"]["header"] == report.evidence["manifest"]["digest"]
    )
    assert errors(report) == []


def test_push_check_through_gateway(gateway_process, local_ca, pushed_image):
    """Through the gateway the upload Location keeps the public port and https."""
    address = f"localhost:{gateway_process.port}"
    report = run_probe(
        address, ca=[local_ca / certs.CA_CERT], image=pushed_image, push_check=True
    )
    gateway_process._out.close()
    location = report.evidence["upload"]["location"]
    assert not location.startswith("http://")
    assert step(report, "upload").status == "ok", location
    assert step(report, "manifest").status == "ok"
    assert errors(report) == []


def mock_registry(case: str, port_holder: dict) -> web.Application:
    """A registry stand-in over TLS whose upload and manifest replies break one rule each."""

    async def v2(request):
        return web.json_response(
            {}, headers={"Docker-Distribution-Api-Version": "registry/2.0"}
        )

    async def start_upload(request):
        port = port_holder["port"]
        locations = {
            "port-443": "https://localhost/v2/app/blobs/uploads/9f1c?_state=AbC%2B_x%3D",
            "downgrade": f"http://localhost:{port}/v2/app/blobs/uploads/9f1c?_state=AbC%2B_x%3D",
            "backend": "http://127.0.0.1:5000/v2/app/blobs/uploads/9f1c?_state=AbC%2B_x%3D",
        }
        location = locations.get(case, "/v2/app/blobs/uploads/9f1c?_state=AbC%2B_x%3D")
        return web.Response(
            status=202,
            headers={
                "Location": location,
                "Docker-Upload-UUID": "9f1c",
                "Range": "0-0",
            },
        )

    async def patch(request):
        received = 0
        while chunk := await request.content.read(65536):
            received += len(chunk)
        if case == "nginx-413" and received > 1024 * 1024:
            return web.Response(
                status=413,
                text=NGINX_413,
                content_type="text/html",
                headers={"Server": "nginx/1.22.1"},
            )
        if case == "timeout-504":
            return web.Response(
                status=504,
                text="<html>504 Gateway Time-out</html>",
                content_type="text/html",
            )
        return web.Response(status=202, headers={"Range": f"0-{received - 1}"})

    async def cancel(request):
        return web.Response(status=204)

    async def manifest(request):
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        if case == "wrong-digest":
            headers["Docker-Content-Digest"] = "sha256:" + "0" * 64
        elif case != "no-digest":
            headers["Docker-Content-Digest"] = MANIFEST_DIGEST
        return web.Response(body=MANIFEST, headers=headers)

    app = web.Application()
    app.router.add_get("/v2/", v2)
    app.router.add_post("/v2/app/blobs/uploads/", start_upload)
    app.router.add_patch("/v2/app/blobs/uploads/9f1c", patch)
    app.router.add_delete("/v2/app/blobs/uploads/9f1c", cancel)
    app.router.add_get("/v2/app/manifests/1.0", manifest)
    return app


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "port-443",
            "The upload URL sends the client to port 443, but you connected on {port}",
        ),
        ("downgrade", "Scheme downgrade in upload URL"),
        (
            "backend",
            "Scheme downgrade in upload URL: the registry returned Location: 'http://127.0.0.1:5000/",
        ),
        (
            "nginx-413",
            "An intermediate proxy caps request bodies (HTML 413 from 'nginx/1.22.1')",
        ),
        ("timeout-504", "A proxy timed out during the layer upload"),
        ("no-digest", "The Docker-Content-Digest header is missing"),
        ("wrong-digest", "stripped or altered by an intermediate"),
    ],
)
def test_push_check_proxy_faults(tmp_path, root_ca, case, expected):
    """Each proxy fault behind a working /v2/ gives one Error with the header quoted."""
    trust = support.write_trust(tmp_path / "trust", root_ca.cert)
    port_holder: dict = {}
    app = mock_registry(case, port_holder)
    with support.ThreadedApp(app, server_context(tmp_path, root_ca)) as server:
        port_holder["port"] = server.port
        report = run_probe(
            f"localhost:{server.port}",
            ca=[trust / "ca.crt"],
            image="app:1.0",
            push_check=True,
        )
    assert report.verdict == probe.TLS_OK
    found = errors(report)
    assert len(found) == 1, found
    assert expected.format(port=server.port) in found[0]
    assert not report.ok


def test_push_check_clean_mock(tmp_path, root_ca):
    """A relative Location and a matching digest header: no finding, exit 0 for podman."""
    trust = support.write_trust(tmp_path / "trust", root_ca.cert)
    port_holder: dict = {}
    with support.ThreadedApp(
        mock_registry("clean", port_holder), server_context(tmp_path, root_ca)
    ) as server:
        port_holder["port"] = server.port
        report = run_probe(
            f"localhost:{server.port}",
            ca=[trust / "ca.crt"],
            image="app:1.0",
            push_check=True,
            client="podman",
        )
    assert errors(report) == []
    assert report.ok


def test_push_check_needs_image(registry):
    report = run_probe(registry.address, image="<repo>:<tag>", push_check=True)
    assert any("needs --image" in f.text for f in report.findings)
