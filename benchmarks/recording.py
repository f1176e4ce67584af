"""Benchmark results: rows, ratios and the results files (imported by the benchmarks and by
``conftest.py``, whose hooks call :func:`write_results` at the end of the session).

Every measurement becomes one row (device, torch version, CPU threads, group, provider,
metric, median, spread, unit). Ratios between providers are only formed from values
measured in the same run. At the end of the session the rows are written to
``benchmarks/results/latest.{csv,json,md}`` plus ``latest.png`` (a bar chart of the ratios),
and the markdown tables are printed. ``VITA_BENCH_RESULTS=<dir>`` writes them elsewhere.
Running a subset (``-k``) rewrites the files with that subset.
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import statistics
from collections import defaultdict
from pathlib import Path

import torch

RESULTS_DIR = Path(os.environ.get("VITA_BENCH_RESULTS", Path(__file__).parent / "results"))
FIELDS = ["device", "torch", "threads", "group", "provider", "metric", "median", "q1", "q3", "min", "max", "unit",
          "rounds", "note"]

ROWS: list[dict] = []
# (group, metric) -> provider -> median, for ratios
MEDIANS: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
# (group, metric, numerator, denominator, goal) in the order they were asked for
RATIOS: list[tuple[str, str, str, str, str]] = []
# extra markdown sections, e.g. which saved tensors dominate: title -> lines
SECTIONS: dict[str, list[str]] = {}
# 1-minute load average at the start and end of the session: other work on the machine skews times
LOAD: dict[str, float] = {}


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def device_name(device: str = "cpu") -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record(group: str, provider: str, metric: str, median: float, unit: str, *, values: list[float] | None = None,
           device: str = "cpu", note: str = "") -> dict:
    """Add one result row; ``values`` (the rounds) give the spread: quartiles and min/max."""
    values = sorted(values) if values else [median]
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    row = dict(device=device_name(device), torch=torch.__version__, threads=torch.get_num_threads(), group=group,
               provider=provider, metric=metric, median=median, q1=q1, q3=q3, min=values[0], max=values[-1], unit=unit,
               rounds=len(values), note=note)
    ROWS.append(row)
    MEDIANS[(group, metric)][provider] = median
    return row


def report_ratio(group: str, numerator: str, denominator: str, metric: str = "time", goal: str = "") -> None:
    """Report ``numerator / denominator`` of ``metric`` medians of ``group`` at the end of the run."""
    key = (group, metric, numerator, denominator, goal)
    if key not in RATIOS:
        RATIOS.append(key)


def add_section(title: str, lines: list[str]) -> None:
    SECTIONS[title] = list(lines)


def _ratios() -> list[dict]:
    out = []
    for group, metric, num, den, goal in RATIOS:
        values = MEDIANS.get((group, metric), {})
        if num in values and den in values and values[den]:
            out.append(dict(group=group, metric=metric, ratio=f"{num} / {den}", value=values[num] / values[den],
                            goal=goal))
    return out


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.4g}"


def markdown(rows: list[dict], ratios: list[dict]) -> str:
    env = rows[0]
    load = ""
    if LOAD.get("start") is not None and LOAD.get("end") is not None:
        load = f" Load average (1 min) {LOAD['start']:.2f} at the start, {LOAD['end']:.2f} at the end."
    lines = [f"Benchmarks on {env['device']}, torch {env['torch']}, {env['threads']} threads, "
             f"{datetime.date.today().isoformat()}.{load}", ""]
    if ratios:
        lines += ["| group | ratio (same run) | metric | value | goal |", "| --- | --- | --- | ---: | --- |"]
        lines += [f"| {r['group']} | {r['ratio']} | {r['metric']} | {r['value']:.3f} | {r['goal']} |" for r in ratios]
        lines.append("")
    # one line per measurement: the throughput where there is one, else the time or the count
    with_rate = {(r["group"], r["provider"]) for r in rows if r["metric"] == "throughput"}
    shown = [r for r in rows if not (r["metric"] == "time" and (r["group"], r["provider"]) in with_rate)]
    lines += ["| group | provider | metric | median | spread (min-max) | unit |",
              "| --- | --- | --- | ---: | --- | --- |"]
    for r in shown:
        spread = f"{_fmt(r['min'])}-{_fmt(r['max'])}" if r["rounds"] > 1 else ""
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {r['group']} | {r['provider']}{note} | {r['metric']} | {_fmt(r['median'])} | {spread} | "
                     f"{r['unit']} |")
    for title, body in SECTIONS.items():
        lines += ["", f"**{title}**", "", *body]
    return "\n".join(lines) + "\n"


def _colour(ratio: dict) -> str:
    goal = ratio["goal"].replace(" ", "")
    if goal.startswith("<="):
        return "tab:green" if ratio["value"] <= float(goal[2:]) else "tab:red"
    if goal.startswith(">="):
        return "tab:green" if ratio["value"] >= float(goal[2:]) else "tab:red"
    return "tab:blue"


def _plot(ratios: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['group']}\n{r['ratio']} ({r['metric']})" for r in ratios]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(ratios) + 1.2))
    values = [r["value"] for r in ratios]
    ax.barh(range(len(ratios)), values, color=[_colour(r) for r in ratios])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(ratios)), labels, fontsize=7)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=7)
    ax.set_xlabel("ratio of medians measured in the same run (green / red: goal met / missed; blue: no goal)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def session_started() -> None:
    LOAD["start"] = _load()


def write_results(terminalreporter) -> None:
    """Write the rows and ratios of this run to ``RESULTS_DIR`` and print the tables."""
    if not ROWS:
        return
    LOAD["end"] = _load()
    ratios = _ratios()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / "latest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(ROWS)
    with open(RESULTS_DIR / "latest.json", "w") as f:
        json.dump({"rows": ROWS, "ratios": ratios, "sections": SECTIONS, "load_average": LOAD}, f, indent=1)
    text = markdown(ROWS, ratios)
    (RESULTS_DIR / "latest.md").write_text(text)
    if ratios:
        _plot(ratios, RESULTS_DIR / "latest.png")
    terminalreporter.section("benchmark results (same run)")
    for line in text.splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"written to {RESULTS_DIR}/latest.{{csv,json,md,png}}")
