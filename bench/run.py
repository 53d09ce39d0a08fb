"""`python -m bench`: start the registry and every front-end, run each workload interleaved.

Order: for each workload, for each repetition, every front-end once, the order
rotated by one each repetition (A B, B A, ...), so that slow drifts in machine
load fall on every front-end alike. Results go to bench/results/ as JSON and
Markdown; a full run also replaces the generated part of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from bench import frontends, procstat, report, workloads
from gateway import certs, lab

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BENCHMARKS = ROOT / "BENCHMARKS.md"
TOOLS = ("curl", "hey", "skopeo", "docker-registry", "nginx")
SMALL_PATHS = (
    ("get-v2", "GET", "/v2/"),
    ("head-manifest", "HEAD", "/v2/bench/img/manifests/v1"),
    ("get-manifest", "GET", "/v2/bench/img/manifests/v1"),
)
CONCURRENCY = (1, 16, 64)
BLOB_REPO = "bench/blob"


@dataclass
class Sizes:
    blob_mib: int
    chunk_mib: int
    layer_mib: tuple[int, ...]
    requests: int
    repetitions: int


FULL = Sizes(blob_mib=1024, chunk_mib=64, layer_mib=(8, 32, 64, 128), requests=2000, repetitions=3)
QUICK = Sizes(blob_mib=64, chunk_mib=16, layer_mib=(1, 2, 4, 8), requests=200, repetitions=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="64 MiB blob, 200 requests, 1 repetition"
    )
    parser.add_argument("--repetitions", type=int, help="repetitions of each workload (full: 3)")
    parser.add_argument("--blob-mib", type=int, help="blob size in MiB (full: 1024)")
    parser.add_argument("--requests", type=int, help="requests per small-request cell (full: 2000)")
    parser.add_argument(
        "--targets",
        default="gateway,gateway-metrics,nginx,haproxy",
        help="comma-separated front-ends: gateway, gateway-metrics, gateway-aiohttp, nginx, nginx-recipe, "
        "haproxy (default gateway,gateway-metrics,nginx,haproxy; missing programs are skipped)",
    )
    parser.add_argument(
        "--gateway",
        action="append",
        default=[],
        metavar="NAME=CONFIG",
        help="add the target gateway-NAME: the gateway with the TOML file CONFIG; repeat for more",
    )
    parser.add_argument(
        "--gateway-at",
        action="append",
        default=[],
        metavar="NAME=REVISION",
        help="add the target gateway-NAME: the gateway package as of git REVISION; repeat for more",
    )
    parser.add_argument(
        "--only",
        metavar="WORKLOADS",
        help="comma-separated workload prefixes to run, e.g. push,pull or head-manifest",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=20,
        help="minutes after which remaining operations are skipped (default 20)",
    )
    parser.add_argument("--no-update", action="store_true", help="do not rewrite BENCHMARKS.md")
    return parser


def machine_info() -> dict:
    """Return the machine and program versions that the results depend on."""
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])

    def version(*command: str) -> str:
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"
        text = (result.stdout + result.stderr).strip().splitlines()
        return text[0] if text else "unknown"

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "nginx": version("nginx", "-v"),
        "haproxy": version("haproxy", "-v"),
        "registry": version("docker-registry", "--version"),
        "curl": version("curl", "--version"),
        "skopeo": version("skopeo", "--version"),
    }


class Bench:
    """One benchmark run: the processes it started and the records it collected."""

    def __init__(
        self,
        args: argparse.Namespace,
        sizes: Sizes,
        targets: list[str],
        variants: dict[str, Path],
        revisions: dict[str, str],
    ):
        self.revisions = revisions
        self.args = args
        self.sizes = sizes
        self.targets = targets
        self.variants = variants
        self.records: list[dict] = []
        self.fronts: dict[str, frontends.Frontend] = {}
        self.registry: lab.RegistryProcess | None = None
        self.deadline = time.monotonic() + args.deadline * 60
        self.work = Path(tempfile.mkdtemp(prefix="registry-gateway-bench-"))

    def setup(self) -> None:
        trust = certs.ensure_serving_pair(self.work / "certs", ["localhost", "127.0.0.1", "::1"])
        self.ca_file = trust.ca_path
        self.cert_dir = self.work / "trust"
        self.cert_dir.mkdir()
        shutil.copy(self.ca_file, self.cert_dir / "ca.crt")

        # Registry storage goes on tmpfs when there is one, so that disk speed and
        # other disk users stay out of the numbers. Every push sends the same
        # blob, which the registry stores once.
        shm = Path("/dev/shm")
        storage = Path(
            tempfile.mkdtemp(prefix="bench-registry-", dir=shm if shm.is_dir() else None)
        )
        self.registry = lab.RegistryProcess(host="127.0.0.1", workdir=storage).start()
        for name in self.targets:
            self.fronts[name] = frontends.start(
                name,
                self.work,
                self.registry.url,
                trust.cert_path,
                trust.key_path,
                self.variants.get(name),
                self.revisions.get(name),
            )
            print(
                f"Started {name} on {self.fronts[name].base_url} (pid {self.fronts[name].pid})",
                flush=True,
            )

        blob_folder = storage.parent / (storage.name + "-client")
        self.client_folder = blob_folder
        self.blob = workloads.make_blob(
            blob_folder, self.sizes.blob_mib * workloads.MIB, self.sizes.chunk_mib * workloads.MIB
        )
        upstream = workloads.Client(self.registry.url, self.ca_file)
        workloads.push_put(upstream, self.blob, BLOB_REPO)

        self.layout = self.work / "image"
        lab.build_oci_layout(
            self.layout, "v1", tuple(m * workloads.MIB for m in self.sizes.layer_mib), seed=7
        )
        self.layout_digests = [
            "sha256:" + path.name for path in (self.layout / "blobs" / "sha256").iterdir()
        ]
        self.copies = 0
        self.layout_bytes = sum(
            p.stat().st_size for p in (self.layout / "blobs" / "sha256").iterdir()
        )
        # The manifest for the small-request workloads belongs to another image, so
        # that no repository of the copied image's blobs exists before a copy.
        seed_layout = self.work / "seed-image"
        lab.build_oci_layout(seed_layout, "v1", (1024, 4096), seed=8)
        seeded = lab.skopeo(
            "copy",
            "--dest-tls-verify=false",
            f"oci:{seed_layout}:v1",
            f"docker://{self.registry.address}/bench/img:v1",
        )
        if seeded.returncode != 0:
            raise RuntimeError(f"seeding the manifest failed: {lab.skopeo_error(seeded)}")

    def teardown(self) -> None:
        for front in self.fronts.values():
            front.stop()
        if self.registry is not None:
            self.registry.stop()
            shutil.rmtree(self.registry.workdir, ignore_errors=True)
        shutil.rmtree(getattr(self, "client_folder", self.work / "none"), ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)

    def selected(self, workload: str) -> bool:
        if not self.args.only:
            return True
        return any(workload.startswith(prefix) for prefix in self.args.only.split(","))

    def measure(self, workload: str, target: str, repetition: int, operation) -> None:
        """Run `operation(client)` once against `target`, metering the front-end."""
        if time.monotonic() > self.deadline:
            print(f"Skipped {workload} on {target}: the --deadline has passed", flush=True)
            return
        front = self.fronts[target]
        client = workloads.Client(front.base_url, self.ca_file)
        record = {"workload": workload, "target": target, "repetition": repetition}
        meter = procstat.Meter(front.pid, front.spool_folders)
        started = time.monotonic()
        try:
            with meter:
                outcome = operation(client)
        except (workloads.OperationFailed, subprocess.TimeoutExpired, OSError, RuntimeError) as exc:
            outcome = workloads.Outcome(errors=1, error=str(exc))
            seconds = None
        else:
            seconds = time.monotonic() - started
        usage = meter.usage
        record.update(asdict(outcome))
        record["seconds"] = seconds
        if usage is not None:
            record.update(asdict(usage))
            record["rss_growth"] = usage.rss_growth
        self.records.append(record)
        print(_progress_line(record), flush=True)

    def interleave(self, workload: str, operation) -> None:
        if not self.selected(workload):
            return
        for repetition in range(self.sizes.repetitions):
            shift = repetition % len(self.targets)
            for target in self.targets[shift:] + self.targets[:shift]:
                self.measure(workload, target, repetition, operation)

    def run(self) -> None:
        blob = self.blob
        self.interleave("push-put", lambda c: workloads.push_put(c, blob, BLOB_REPO))
        self.interleave("push-chunks", lambda c: workloads.push_chunks(c, blob, BLOB_REPO))
        self.interleave("push-stream", lambda c: workloads.push_stream(c, blob, BLOB_REPO))
        self.interleave("pull", lambda c: workloads.pull(c, blob, BLOB_REPO))
        if self.selected("pull"):
            self.verify_pulls()
        self.interleave("skopeo-copy", self.copy_image)
        for name, method, path in SMALL_PATHS:
            for concurrency in CONCURRENCY:
                self.interleave(
                    f"{name} c={concurrency}",
                    lambda c, m=method, p=path, n=concurrency: workloads.hey(
                        c, p, m, n, self.sizes.requests
                    ),
                )

    def copy_image(self, client: workloads.Client) -> workloads.Outcome:
        self.copies += 1
        repo = f"bench/copy{self.copies}"
        try:
            return workloads.skopeo_copy(
                client, self.layout, self.cert_dir, repo, self.layout_bytes
            )
        finally:
            upstream = workloads.Client(self.registry.url, self.ca_file)
            workloads.forget_blobs(upstream, repo, self.layout_digests)

    def verify_pulls(self) -> None:
        for target, front in self.fronts.items():
            client = workloads.Client(front.base_url, self.ca_file)
            try:
                workloads.verify_pull(client, self.blob, BLOB_REPO)
            except (workloads.OperationFailed, OSError) as exc:
                print(
                    f"Error: the digest check of a pull through {target} failed: {exc}", flush=True
                )
                self.records.append(
                    {
                        "workload": "pull-digest-check",
                        "target": target,
                        "repetition": 0,
                        "errors": 1,
                        "error": str(exc),
                        "seconds": None,
                    }
                )


def _progress_line(record: dict) -> str:
    if record["seconds"] is None:
        return f"{record['workload']:<20} {record['target']:<16} FAILED: {record['error']}"
    extra = f" {record['rps']:.0f} req/s" if record.get("rps") else ""
    return (
        f"{record['workload']:<20} {record['target']:<16} {record['seconds']:7.2f} s"
        f" cpu {record['cpu_seconds']:6.2f} s rss peak {record['rss_peak'] / workloads.MIB:6.1f} MiB{extra}"
        + (f" errors {record['errors']}" if record["errors"] else "")
    )


def write_results(bench: Bench, info: dict, command: str, quick: bool, no_update: bool) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc)
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = {
        "date": stamp.isoformat(timespec="seconds"),
        "command": command,
        "machine": info,
        "sizes": asdict(bench.sizes),
        "targets": bench.targets,
        "records": bench.records,
    }
    name = stamp.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if quick else "")
    json_path = RESULTS / f"{name}.json"
    json_path.write_text(json.dumps(raw, indent=1) + "\n")

    text = report.render(raw)
    (RESULTS / f"{name}.md").write_text(text + "\n")
    print("\n" + text)
    if not quick and not no_update:
        if report.update_benchmarks(BENCHMARKS, text):
            print(f"Updated {BENCHMARKS}")
        else:
            print(
                f"Note: {BENCHMARKS} has no generated section; the results are only in {RESULTS}."
            )
    return json_path


def select_sizes(args: argparse.Namespace) -> Sizes:
    sizes = dataclasses.replace(QUICK if args.quick else FULL)
    if args.repetitions:
        sizes.repetitions = args.repetitions
    if args.blob_mib:
        sizes.blob_mib = args.blob_mib
        sizes.chunk_mib = min(sizes.chunk_mib, args.blob_mib)
    if args.requests:
        sizes.requests = args.requests
    return sizes


def select_targets(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[list[str], dict[str, Path], dict[str, str]]:
    """Return the targets, the config file of each --gateway and the revision of each --gateway-at."""
    targets = []
    for name in (t.strip() for t in args.targets.split(",") if t.strip()):
        if frontends.available(name):
            targets.append(name)
        else:
            print(f"Note: {name} is not installed; it is left out of this run.")
    variants: dict[str, Path] = {}
    for item in args.gateway:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"--gateway takes NAME=CONFIG with an existing TOML file, not {item!r}")
        variants[f"gateway-{name}"] = Path(path).resolve()
        targets.append(f"gateway-{name}")
    revisions: dict[str, str] = {}
    for item in args.gateway_at:
        name, sep, revision = item.partition("=")
        if not sep or not revision:
            parser.error(f"--gateway-at takes NAME=REVISION, not {item!r}")
        revisions[f"gateway-{name}"] = revision
        targets.append(f"gateway-{name}")
    if "nginx" not in targets:
        parser.error("nginx is the baseline of every ratio: keep it in --targets")
    return targets, variants, revisions


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        print(
            f"Error: the benchmark needs {', '.join(missing)}: run as root "
            "'apt-get install -y curl hey skopeo docker-registry nginx'.",
            file=sys.stderr,
        )
        return 1
    sizes = select_sizes(args)
    targets, variants, revisions = select_targets(parser, args)

    info = machine_info()
    info["busy_before"] = procstat.system_busy_fraction()
    info["loadavg_start"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    bench = Bench(args, sizes, targets, variants, revisions)
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.monotonic()
    try:
        bench.setup()
        bench.run()
    except (RuntimeError, workloads.OperationFailed, OSError):
        traceback.print_exc()
        print("Error: the benchmark could not finish; partial results follow.", file=sys.stderr)
    finally:
        bench.teardown()
    info["busy_after"] = procstat.system_busy_fraction()
    info["duration_s"] = round(time.monotonic() - started)
    path = write_results(bench, info, command.strip(), args.quick, args.no_update)
    print(f"Raw results: {path} ({info['duration_s']} s)")
    return 0 if bench.records and all(r["errors"] == 0 for r in bench.records) else 1
