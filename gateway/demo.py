"""`registry-gateway demo`: the whole job on loopback, start to finish.

Starts a real distribution registry (plain HTTP) and the gateway in front of it,
shows the error a client gets from the plain port, pushes a small multi-layer OCI
image through the gateway with skopeo trusting only the generated CA, pulls it
back, compares digests, and stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from gateway import lab, probe_cli
from gateway.errors import GatewayError

PREFERRED_REGISTRY_PORT = 5000
PREFERRED_GATEWAY_PORT = 5443
HOST = "127.0.0.1"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a registry and the gateway on loopback and push an image through it",
        description=__doc__,
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder and print its path"
    )
    parser.set_defaults(func=run)


def pick_port(preferred: int) -> int:
    """Return the preferred port if it is free, else the next free one above it."""
    for port in range(preferred, preferred + 100):
        if lab.port_is_free(HOST, port):
            return port
    return lab.free_port(HOST)


def manifest_digests(layout: Path) -> tuple[str, list[str]]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_text())
    return digest, [layer["digest"] for layer in manifest["layers"]]


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="registry-gateway-demo-"))
    registry = lab.RegistryProcess(host=HOST, port=pick_port(PREFERRED_REGISTRY_PORT))
    gateway: lab.GatewayProcess | None = None
    try:
        registry.workdir = workdir / "registry"
        registry.workdir.mkdir()
        registry.start()
        print(f"1. Started the distribution registry on http://{registry.address} (plain HTTP).")

        image = workdir / "image"
        pushed_digest = lab.build_oci_layout(image, layer_sizes=(2048, 65536, 1 << 20))
        print(f"2. Built a 3-layer OCI image, manifest {pushed_digest}.")

        plain = lab.skopeo("copy", f"oci:{image}:v1", f"docker://{registry.address}/demo/app:v1")
        if plain.returncode == 0:
            raise GatewayError("skopeo pushed to the plain-HTTP port, which clients refuse; check skopeo's configuration.")
        print("3. Pushing to the plain port fails, as it does for docker by any non-loopback name:")
        print(f"     {lab.skopeo_error(plain)}")

        certs_dir = workdir / "certs"
        gateway_port = pick_port(PREFERRED_GATEWAY_PORT)
        gateway = lab.GatewayProcess(
            [
                "--listen", f"{HOST}:{gateway_port}",
                "--upstream", registry.url,
                "--certs-dir", str(certs_dir),
                "--log-level", "warning",
            ]
        ).start()
        address = gateway.addresses[0]
        print(f"4. Started the gateway on https://{address} with a new local CA {certs_dir / 'ca.crt'}.")
        print(f"     {probe_cli.verdict_line(registry.address)}")
        print(f"     {probe_cli.verdict_line(address, [certs_dir / 'ca.crt'])}")

        trust = workdir / "trust"
        trust.mkdir()
        shutil.copy(certs_dir / "ca.crt", trust / "ca.crt")
        push = lab.skopeo(
            "copy", "--dest-cert-dir", str(trust), f"oci:{image}:v1", f"docker://{address}/demo/app:v1"
        )
        if push.returncode != 0:
            raise GatewayError(f"skopeo push through the gateway failed: {lab.skopeo_error(push)}")
        print(f"5. Pushed demo/app:v1 through https://{address}, trusting only that CA.")

        pulled = workdir / "pulled"
        pull = lab.skopeo(
            "copy", "--src-cert-dir", str(trust), f"docker://{address}/demo/app:v1", f"oci:{pulled}:v1"
        )
        if pull.returncode != 0:
            raise GatewayError(f"skopeo pull through the gateway failed: {lab.skopeo_error(pull)}")
        sent, sent_layers = manifest_digests(image)
        got, got_layers = manifest_digests(pulled)
        if (sent, sent_layers) != (got, got_layers):
            raise GatewayError(f"Digest mismatch after the round trip: pushed {sent}, pulled {got}.")
        print(f"6. Pulled it back: manifest {got} and all {len(got_layers)} layer digests match.")
        print("Done. Everything the demo started has been stopped.")
        return 0
    finally:
        if gateway is not None:
            gateway.stop()
        registry.stop()
        if args.keep:
            print(f"Kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
