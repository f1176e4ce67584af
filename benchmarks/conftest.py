"""pytest hooks and fixtures of the benchmarks; the recording itself is :mod:`recording`."""
from __future__ import annotations

import os
import statistics

import pytest
import torch

from recording import record, session_started, write_results

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_sessionstart(session):
    session_started()


@pytest.fixture
def measure(benchmark):
    """``measure(group, provider, fn, rounds, items=None, item_unit="videos", device="cpu")``.

    Times ``fn`` with pytest-benchmark (one warm-up round, then ``rounds``), records the
    time per call and, with ``items`` (videos, clips, steps per call), the throughput.
    Returns ``fn``'s last result.
    """
    def run(group: str, provider: str, fn, rounds: int = 5, *, items: int | None = None, item_unit: str = "videos",
            device: str = "cpu", warmup: int = 1):
        benchmark.group = group
        benchmark.extra_info.update(provider=provider, torch=torch.__version__, threads=torch.get_num_threads())
        result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
        if benchmark.stats is None:  # --benchmark-disable
            return result
        times = list(benchmark.stats.stats.data)
        record(group, provider, "time", statistics.median(times), "s", values=times, device=device)
        if items:
            rates = [items / t for t in times]
            record(group, provider, "throughput", statistics.median(rates), f"{item_unit}/s", values=rates,
                   device=device)
            benchmark.extra_info[f"{item_unit}_per_s"] = round(statistics.median(rates), 3)
        return result
    return run


@pytest.fixture
def once(benchmark):
    """Run ``fn`` once through pytest-benchmark (so ``--benchmark-only`` keeps the test) without
    recording its time: for tests whose results are counts, not times."""
    def run(group: str, fn):
        benchmark.group = group
        return benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    return run


def pytest_terminal_summary(terminalreporter):
    write_results(terminalreporter)
