"""Benchmark helpers: every measurement is also recorded so ratios between providers
measured in the same run (e.g. eager / frozen CLIP) are printed at the end."""
from __future__ import annotations

import os
from collections import defaultdict

import pytest
import torch

# group -> provider -> median seconds
MEDIANS: dict[str, dict[str, float]] = defaultdict(dict)
# group -> (numerator provider, denominator provider) pairs to report
RATIOS: dict[str, list[tuple[str, str]]] = defaultdict(list)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def measure(benchmark):
    """``measure(group, provider, fn, rounds)``: benchmark ``fn`` and remember its median."""
    def run(group: str, provider: str, fn, rounds: int = 5):
        benchmark.group = group
        benchmark.extra_info.update(provider=provider, torch=torch.__version__, threads=torch.get_num_threads())
        result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
        if benchmark.stats is not None:  # None under --benchmark-disable
            MEDIANS[group][provider] = benchmark.stats.stats.median
        return result
    return run


def report_ratio(group: str, numerator: str, denominator: str) -> None:
    if (numerator, denominator) not in RATIOS[group]:
        RATIOS[group].append((numerator, denominator))


def pytest_terminal_summary(terminalreporter):
    lines = []
    for group, pairs in RATIOS.items():
        for num, den in pairs:
            if num in MEDIANS[group] and den in MEDIANS[group]:
                lines.append(f"{group}: {num} / {den} = {MEDIANS[group][num] / MEDIANS[group][den]:.3f} (median time ratio)")
    if lines:
        terminalreporter.section("measured ratios (same run)")
        for line in lines:
            terminalreporter.write_line(line)
