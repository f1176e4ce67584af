"""Evaluation in 2 gloo processes (each a shard, results gathered) equals one process."""
from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import save_tiny_checkpoint, write_sliding_clip
from vita_clip import load_model
from vita_clip.data.lists import write_video_list
from vita_clip.engine.distributed import DistInfo
from vita_clip.engine.evaluate import evaluate_protocol
from vita_clip.inference import model_data_config

CLASSES = ["left", "right", "up"]
KEYS = ("top1", "top5", "mean_class_accuracy", "per_class_top1", "confusion", "videos", "skipped")


def run(checkpoint, root, dist_info):
    torch.set_num_threads(1)
    model = load_model(checkpoint)
    data = model_data_config(model, checkpoint, views=(2, 1))
    results = evaluate_protocol(model, "supervised", str(root), data, batch_size=2, val_list=str(root / "val.txt"),
                                classes=CLASSES, device=torch.device("cpu"), num_workers=0, dist_info=dist_info)
    part = results["parts"][0]
    return {**{k: part[k] for k in KEYS}, "skipped_videos": sorted(part["skipped_videos"])}


def worker(rank, checkpoint, root, store):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        result = run(checkpoint, root, DistInfo(rank, 2, rank))
        (root / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one(tmp_path):
    items = []
    for i in range(7):  # odd: the shards differ in size
        write_sliding_clip(tmp_path / f"v{i}.webm", seed=i)
        items.append((f"v{i}.webm", i % 3))
    (tmp_path / "broken.webm").write_bytes(b"\x00" * 20)
    write_video_list(tmp_path / "val.txt", items + [("broken.webm", 1), ("gone.webm", 2)])
    checkpoint = save_tiny_checkpoint(tmp_path / "model.pt", CLASSES)

    single = run(checkpoint, tmp_path, DistInfo())
    mp.spawn(worker, args=(checkpoint, tmp_path, tmp_path / "store"), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == single
    assert single["videos"] == 7 and single["skipped"] == 2 and sum(map(sum, single["confusion"])) == 7
