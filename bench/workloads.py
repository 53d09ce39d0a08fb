"""The operations the benchmark times, each run by a client process on loopback.

Blob transfers use curl, because a Python client is itself the bottleneck at these
rates; small requests use hey; the image push uses skopeo. Small control requests
(starting an upload, the final PUT of a chunked upload) go through urllib.
Every client has a timeout, so every operation ends by itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gateway import lab

MIB = 1024 * 1024
TRANSFER_TIMEOUT = 300
HEY_TIMEOUT = 180
MANIFEST_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json,"
    "application/vnd.docker.distribution.manifest.v2+json"
)


@dataclass
class Blob:
    """A file of random bytes, its digest, and the same bytes split into chunk files."""

    path: Path
    size: int
    digest: str
    chunks: list[Path]


@dataclass
class Outcome:
    """The bytes, requests and errors of one operation."""

    bytes: int = 0
    requests: int = 0
    errors: int = 0
    error: str | None = None
    rps: float | None = None


class OperationFailed(Exception):
    pass


def make_blob(folder: Path, size: int, chunk_size: int) -> Blob:
    """Write `size` random bytes and their chunk files; random data defeats compression."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "blob.bin"
    digest = hashlib.sha256()
    chunks: list[Path] = []
    with open(path, "wb") as out:
        written = 0
        while written < size:
            piece = os.urandom(min(chunk_size, size - written))
            digest.update(piece)
            out.write(piece)
            chunk = folder / f"chunk{len(chunks):04d}.bin"
            chunk.write_bytes(piece)
            chunks.append(chunk)
            written += len(piece)
    return Blob(path, size, "sha256:" + digest.hexdigest(), chunks)


class Client:
    """Requests against one front-end, trusting only the benchmark's CA."""

    def __init__(self, base_url: str, ca_file: Path):
        self.base_url = base_url
        self.ca_file = ca_file
        self._context = ssl.create_default_context(cafile=str(ca_file))

    def _request(
        self, method: str, url: str, headers: dict | None = None, data: bytes | None = None
    ):
        request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self._context) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def start_upload(self, repo: str) -> str:
        status, headers, body = self._request(
            "POST", f"{self.base_url}/v2/{repo}/blobs/uploads/", data=b""
        )
        if status != 202 or "Location" not in headers:
            raise OperationFailed(f"POST upload returned {status}: {body[:200]!r}")
        return headers["Location"]

    def finish_upload(self, location: str, digest: str) -> None:
        status, headers, body = self._request(
            "PUT", _with_digest(location, digest), headers={"Content-Length": "0"}, data=b""
        )
        if status != 201:
            raise OperationFailed(f"final PUT returned {status}: {body[:200]!r}")

    def curl(self, *args: str, stdin=None) -> tuple[int, dict[str, str], str]:
        """Run curl; return the status and headers of the last response, and curl's output."""
        command = [
            "curl",
            "-sS",
            "--cacert",
            str(self.ca_file),
            "--max-time",
            str(TRANSFER_TIMEOUT),
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "Expect:",
            *args,
        ]
        result = subprocess.run(
            command,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TRANSFER_TIMEOUT + 10,
        )
        if result.returncode != 0:
            raise OperationFailed(f"curl exited with {result.returncode}: {result.stderr.strip()}")
        return _parse_head(result.stdout)


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + "digest=" + digest


def _parse_head(text: str) -> tuple[int, dict[str, str], str]:
    blocks = [b for b in re.split(r"\r?\n\r?\n", text) if b.startswith("HTTP/")]
    if not blocks:
        raise OperationFailed(f"curl printed no response head: {text[:200]!r}")
    lines = blocks[-1].splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, text


def push_put(client: Client, blob: Blob, repo: str) -> Outcome:
    """Monolithic upload: POST, then one PUT carrying the whole blob with its length."""
    location = client.start_upload(repo)
    status, _headers, _ = client.curl(
        "-X",
        "PUT",
        "-T",
        str(blob.path),
        "-H",
        "Content-Type: application/octet-stream",
        _with_digest(location, blob.digest),
    )
    if status != 201:
        raise OperationFailed(f"PUT returned {status}")
    return Outcome(bytes=blob.size, requests=2)


def push_chunks(client: Client, blob: Blob, repo: str) -> Outcome:
    """Chunked upload: one PATCH with Content-Range per chunk file, then the final PUT."""
    location = client.start_upload(repo)
    offset = 0
    for chunk in blob.chunks:
        size = chunk.stat().st_size
        status, headers, _ = client.curl(
            "-X",
            "PATCH",
            "-T",
            str(chunk),
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            f"Content-Range: {offset}-{offset + size - 1}",
            location,
        )
        if status != 202 or "location" not in headers:
            raise OperationFailed(f"PATCH at offset {offset} returned {status}")
        location = headers["location"]
        offset += size
    client.finish_upload(location, blob.digest)
    return Outcome(bytes=blob.size, requests=len(blob.chunks) + 2)


def push_stream(client: Client, blob: Blob, repo: str) -> Outcome:
    """Streamed upload as Docker sends it: one PATCH with a chunked body, then PUT."""
    location = client.start_upload(repo)
    with open(blob.path, "rb") as source:
        status, headers, _ = client.curl(
            "-X",
            "PATCH",
            "-T",
            "-",
            "-H",
            "Content-Type: application/octet-stream",
            location,
            stdin=source,
        )
    if status != 202 or "location" not in headers:
        raise OperationFailed(f"streamed PATCH returned {status}")
    client.finish_upload(headers["location"], blob.digest)
    return Outcome(bytes=blob.size, requests=3)


def pull(client: Client, blob: Blob, repo: str) -> Outcome:
    """GET the blob into /dev/null and check its length."""
    status, headers, _ = client.curl(f"{client.base_url}/v2/{repo}/blobs/{blob.digest}")
    if status != 200:
        raise OperationFailed(f"GET blob returned {status}")
    if int(headers.get("content-length", -1)) != blob.size:
        raise OperationFailed(f"GET blob sent Content-Length {headers.get('content-length')}")
    return Outcome(bytes=blob.size, requests=1)


def verify_pull(client: Client, blob: Blob, repo: str) -> None:
    """Pull the blob once more and compare its SHA-256 with the digest (not timed)."""
    command = [
        "curl",
        "-sS",
        "--fail",
        "--cacert",
        str(client.ca_file),
        "--max-time",
        str(TRANSFER_TIMEOUT),
        f"{client.base_url}/v2/{repo}/blobs/{blob.digest}",
    ]
    digest = hashlib.sha256()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        while piece := process.stdout.read(MIB):
            digest.update(piece)
    if process.returncode != 0:
        raise OperationFailed(f"curl exited with {process.returncode}")
    if "sha256:" + digest.hexdigest() != blob.digest:
        raise OperationFailed(f"digest mismatch: got sha256:{digest.hexdigest()}")


HEY_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
HEY_STATUS = re.compile(r"\[(\d{3})\]\s+(\d+) responses")


def hey(client: Client, path: str, method: str, concurrency: int, requests: int) -> Outcome:
    """Send about `requests` requests at `concurrency` with hey, counting non-2xx responses as errors.

    hey gives each of its `concurrency` workers `requests // concurrency` requests,
    so the count is rounded down to a multiple of the concurrency.
    """
    requests = max(concurrency, requests // concurrency * concurrency)
    command = [
        "hey",
        "-n",
        str(requests),
        "-c",
        str(concurrency),
        "-m",
        method,
        "-t",
        "20",
        "-H",
        f"Accept: {MANIFEST_ACCEPT}",
        client.base_url + path,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=HEY_TIMEOUT, stdin=subprocess.DEVNULL
    )
    match = HEY_RPS.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise OperationFailed(f"hey exited with {result.returncode}: {result.stderr.strip()[:200]}")
    answered = {int(code): int(count) for code, count in HEY_STATUS.findall(result.stdout)}
    ok = sum(count for code, count in answered.items() if 200 <= code < 300)
    errors = requests - ok
    error = None if errors == 0 else f"status counts {answered}"
    return Outcome(requests=requests, errors=errors, error=error, rps=float(match.group(1)))


def forget_blobs(upstream: Client, repo: str, digests: list[str]) -> None:
    """Delete `repo`'s links to `digests` in the registry (not timed).

    skopeo remembers where it pushed each blob (its blob info cache) and on the
    next push to the same registry asks for a cross-repository mount instead of
    uploading. Once the source repository no longer links the blob, the registry
    rejects the mount and skopeo uploads the blob again.
    """
    for digest in digests:
        status, _headers, body = upstream._request(
            "DELETE", f"{upstream.base_url}/v2/{repo}/blobs/{digest}"
        )
        if status not in (202, 404):
            raise OperationFailed(
                f"DELETE blob {digest} in {repo} returned {status}: {body[:200]!r}"
            )


def skopeo_copy(client: Client, layout: Path, cert_dir: Path, repo: str, size: int) -> Outcome:
    """Push a multi-layer OCI image with `skopeo copy`, as a CI job would."""
    authority = client.base_url.removeprefix("https://")
    result = lab.skopeo(
        "copy",
        "--dest-cert-dir",
        str(cert_dir),
        f"oci:{layout}:v1",
        f"docker://{authority}/{repo}:v1",
        timeout=TRANSFER_TIMEOUT,
    )
    if result.returncode != 0:
        raise OperationFailed(f"skopeo copy failed: {lab.skopeo_error(result)}")
    return Outcome(bytes=size, requests=0)
