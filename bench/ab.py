"""`python -m bench.ab`: two gateway variants, one small request, CPU per request, interleaved.

A cell of the full benchmark varies by 10-20% between repetitions when other
work shares the machine, so a lever worth a few percent needs more rounds of
one cell. This starts one registry and two gateways in front of it, each a variant
given as a config file (`NAME=FILE.toml`) or a git revision (`NAME@REVISION`),
and runs hey against each in turn (A B, then B A, ...), reading each gateway's
CPU time from /proc. It prints the median and every round's value in ms of CPU
per request.

    python -m bench.ab --a fast=gateway.toml --b before@HEAD~1 --path /v2/ -c 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import frontends
from gateway import certs, lab

DEADLINE = 30 * 60


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_variant(spec: str, work: Path, upstream: str, folder: Path) -> tuple[str, lab.GatewayProcess]:
    if "@" in spec:
        name, revision = spec.split("@", 1)
        cwd = work / name
        cwd.mkdir()
        frontends._export_gateway(revision, cwd)
        config = None
    elif "=" in spec:
        name, config_text = spec.split("=", 1)
        cwd, config = None, Path(config_text).resolve()
    else:
        raise SystemExit(f"give a variant as NAME=CONFIG.toml or NAME@REVISION, not {spec!r}")
    args = ["--listen", f"127.0.0.1:{lab.free_port()}", "--upstream", upstream, "--certs-dir", str(folder)]
    if config is not None:
        args = ["--config", str(config), *args]
    return name, lab.GatewayProcess(args, cwd=cwd).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="variant A: NAME=CONFIG.toml or NAME@REVISION")
    parser.add_argument("--b", required=True, help="variant B, the same way")
    parser.add_argument("--path", default="/v2/", help="request path (default /v2/)")
    parser.add_argument("-c", "--concurrency", type=int, default=1, help="hey's concurrency (default 1)")
    parser.add_argument("-n", "--requests", type=int, default=3000, help="requests per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per variant (default 8)")
    options = parser.parse_args(argv)
    if not 1 <= options.rounds <= 50 or not 1 <= options.requests <= 100_000:
        parser.error("give 1-50 rounds of 1-100000 requests")

    with tempfile.TemporaryDirectory(prefix="bench-ab-") as temp:
        work = Path(temp)
        folder = work / "certs"
        certs.ensure_serving_pair(folder, ["localhost", "127.0.0.1"])
        registry = lab.RegistryProcess(workdir=work / "registry")
        registry.workdir.mkdir()
        registry.start()
        variants: dict[str, lab.GatewayProcess] = {}
        try:
            for spec in (options.a, options.b):
                name, process = start_variant(spec, work, registry.url, folder)
                variants[name] = process
            results: dict[str, list[float]] = {name: [] for name in variants}
            order = list(variants.items())
            for round_number in range(options.rounds):
                for name, process in order if round_number % 2 == 0 else order[::-1]:
                    url = f"https://localhost:{process.port}{options.path}"
                    before = cpu_seconds(process.process.pid)
                    done = subprocess.run(
                        ["hey", "-n", str(options.requests), "-c", str(options.concurrency), url],
                        capture_output=True, text=True, timeout=DEADLINE,
                    )
                    spent = cpu_seconds(process.process.pid) - before
                    if f"[200]\t{options.requests} responses" not in done.stdout:
                        print(f"{name}: not every response was 200:\n{done.stdout[-400:]}", file=sys.stderr)
                        return 1
                    results[name].append(1000 * spent / options.requests)
            for name, values in results.items():
                rounds = " ".join(f"{value:.3f}" for value in values)
                print(f"{name}: median {statistics.median(values):.3f} ms CPU per request; rounds {rounds}")
        finally:
            for process in variants.values():
                process.stop()
            registry.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
