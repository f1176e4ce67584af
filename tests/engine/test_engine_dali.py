"""Training through DALI's CPU decoder (the trainer's StepBatches and the evaluation loader on the
DALI backend): it runs to the end, stops its feeder, and trains like the CPU backend."""
from __future__ import annotations

import csv
import threading

import pytest
import yaml

from helpers import finishes_within
from vita_clip.demo.dataset import make_demo_dataset
from vita_clip.engine.config import load_config
from vita_clip.engine.trainer import train

pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_dali")
    return make_demo_dataset(root, train_per_class=1, val_per_class=1, size=32, num_frames=12, workers=1)


def run(demo, out, backend: str) -> tuple[dict, list[float]]:
    values = {
        "model": {"name": "vita-clip-tiny", "pretrained": None},
        "data": {"train_list": str(demo.train_list), "val_list": str(demo.val_list), "data_root": str(demo.root),
                 "classes": str(demo.class_file), "num_workers": 0, "backend": backend,
                 "sampling": {"num_frames": 4, "stride": 2}, "transform": {"size": 32, "rand_augment_ops": 1}},
        "steps": 3, "batch_size": 4, "micro_batch_size": 3, "log_every": 1, "save_every": 3, "eval_every": 3,
        "optim": {"lr": 1e-3, "warmup_steps": 1}, "eval_views": [1, 1], "output_dir": str(out), "seed": 5,
    }
    (out.parent / f"{backend}.yaml").write_text(yaml.safe_dump(values))
    result = finishes_within(300, train, load_config(out.parent / f"{backend}.yaml"))
    with open(out / "metrics.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f) if row["split"] == "train"]
    return result, losses


def test_training_on_the_dali_backend_matches_the_cpu_backend(demo, tmp_path):
    cpu, cpu_losses = run(demo, tmp_path / "cpu", "cpu")
    dali, dali_losses = run(demo, tmp_path / "dali", "dali")
    assert not [t for t in threading.enumerate() if t.name == "vita-clip-dali-feeder" and t.is_alive()]
    assert len(dali_losses) == len(cpu_losses) == 3 and dali["val"]["videos"] == cpu["val"]["videos"] == 10
    # the same clips and augmentations; pixels within a level of rounding
    print("LOSSES", cpu_losses, dali_losses)
    assert dali_losses == pytest.approx(cpu_losses, rel=1e-2)
