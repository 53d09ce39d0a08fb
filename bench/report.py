"""Turn raw benchmark records into the Markdown tables of BENCHMARKS.md.

Every cell is the median over the repetitions with the min-max range. A ratio
column divides a front-end's median by nginx's median from the same run.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

MIB = 1024 * 1024
GIB = 1024 * MIB
BASELINE = "nginx"
BLOB_WORKLOADS = ("push-put", "push-chunks", "push-stream", "pull")
# Metrics near zero for every front-end, where a ratio would only amplify noise.
NO_RATIO = ("RSS growth MiB", "spooled MiB")


def _blob_metrics(record: dict) -> dict[str, float]:
    gib = record["bytes"] / GIB
    return {
        "MiB/s": record["bytes"] / MIB / record["seconds"],
        "CPU s/GiB": record["cpu_seconds"] / gib,
        "peak RSS MiB": record["rss_peak"] / MIB,
        "RSS growth MiB": record["rss_growth"] / MIB,
        "spooled MiB": record["spool_peak_bytes"] / MIB,
    }


def _small_metrics(record: dict) -> dict[str, float]:
    return {
        "req/s": record["rps"],
        "CPU ms/req": 1000 * record["cpu_seconds"] / record["requests"],
    }


def _image_metrics(record: dict) -> dict[str, float]:
    return {
        "seconds": record["seconds"],
        "MiB/s": record["bytes"] / MIB / record["seconds"],
        "CPU s/GiB": record["cpu_seconds"] / (record["bytes"] / GIB),
    }


def metrics(record: dict) -> dict[str, float]:
    """Return the derived numbers of one successful record."""
    if record["workload"] in BLOB_WORKLOADS:
        return _blob_metrics(record)
    if record["workload"] == "skopeo-copy":
        return _image_metrics(record)
    return _small_metrics(record)


def summarize(records: list[dict]) -> dict:
    """Group records as {workload: {metric: {target: [values]}}}, plus error counts."""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    errors: dict = defaultdict(int)
    for record in records:
        errors[(record["workload"], record["target"])] += record["errors"]
        if record["error"] is not None and record["errors"] == 0:
            errors[(record["workload"], record["target"])] += 1
        if record.get("seconds") is None:
            continue
        for name, value in metrics(record).items():
            table[record["workload"]][name][record["target"]].append(value)
    return {"table": table, "errors": errors}


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return _number(median)
    return f"{_number(median)} ({_number(min(values))}-{_number(max(values))})"


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(values: list[float], baseline: list[float]) -> str:
    if not values or not baseline or statistics.median(baseline) == 0:
        return "-"
    return f"{statistics.median(values) / statistics.median(baseline):.2f}x"


def markdown(records: list[dict], targets: list[str]) -> str:
    """Return the results table, one row per workload and metric."""
    summary = summarize(records)
    others = [t for t in targets if t != BASELINE]
    head = ["workload", "metric", *targets, *(f"{t}/{BASELINE}" for t in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload, rows in summary["table"].items():
        for name, by_target in rows.items():
            cells = [_cell(by_target.get(t, [])) for t in targets]
            ratios = [
                "-"
                if name in NO_RATIO
                else _ratio(by_target.get(t, []), by_target.get(BASELINE, []))
                for t in others
            ]
            lines.append("| " + " | ".join([workload, name, *cells, *ratios]) + " |")
    total_errors = {t: 0 for t in targets}
    for (_workload, target), count in summary["errors"].items():
        total_errors[target] = total_errors.get(target, 0) + count
    lines.append("")
    lines.append(
        "Errors (failed operations, non-2xx answers, digest mismatches): "
        + ", ".join(f"{t} {total_errors.get(t, 0)}" for t in targets)
        + "."
    )
    return "\n".join(lines)


def _median(summary: dict, workload: str, metric: str, target: str) -> float | None:
    values = summary["table"].get(workload, {}).get(metric, {}).get(target, [])
    return statistics.median(values) if values else None


def target_checks(records: list[dict], target: str) -> str:
    """Return a table of the performance targets for `target`, each with its measured value."""
    summary = summarize(records)
    rows = []

    def ratio(workload: str, metric: str) -> float | None:
        ours = _median(summary, workload, metric, target)
        theirs = _median(summary, workload, metric, BASELINE)
        return None if ours is None or not theirs else ours / theirs

    def check(
        label: str, value: float | None, limit: float, higher_is_better: bool, unit: str
    ) -> None:
        if value is None:
            rows.append(f"| {label} | - | not measured |")
            return
        met = value >= limit if higher_is_better else value <= limit
        sign = ">=" if higher_is_better else "<="
        rows.append(
            f"| {label} | {value:.2f}{unit} (target {sign} {limit:g}{unit}) | {'met' if met else 'NOT met'} |"
        )

    for workload in BLOB_WORKLOADS:
        check(f"{workload} throughput", ratio(workload, "MiB/s"), 1.0, True, "x")
        check(f"{workload} CPU per GiB", ratio(workload, "CPU s/GiB"), 1.0, False, "x")
    for workload in sorted(summary["table"]):
        if workload.startswith(("head-manifest", "get-manifest")):
            check(f"{workload} req/s", ratio(workload, "req/s"), 1.0, True, "x")
    for workload in sorted(summary["table"]):
        if workload.startswith(("head-", "get-")):
            check(f"{workload} CPU per request", ratio(workload, "CPU ms/req"), 2.0, False, "x")
    peaks = [_median(summary, w, "peak RSS MiB", target) for w in BLOB_WORKLOADS]
    growth = [_median(summary, w, "RSS growth MiB", target) for w in BLOB_WORKLOADS]
    spooled = [_median(summary, w, "spooled MiB", target) for w in BLOB_WORKLOADS]
    check(
        "peak RSS during blob transfers", max(filter(None, peaks), default=None), 64, False, " MiB"
    )
    check(
        "RSS growth during blob transfers",
        max((g for g in growth if g is not None), default=None),
        8,
        False,
        " MiB",
    )
    check(
        "bytes spooled to disk",
        max((s for s in spooled if s is not None), default=None),
        0,
        False,
        " MiB",
    )
    errors = sum(count for (_w, t), count in summary["errors"].items() if t == target)
    check("errors and digest mismatches", float(errors), 0, False, "")
    head = [f"| target ({target} vs {BASELINE}) | measured | verdict |", "|---|---|---|"]
    return "\n".join(head + rows)
