"""The empty-step decision of a training step is taken over all processes (2 gloo processes):
a process without a readable sample while the other has some goes on with it, and when no
process has any for ``max_empty_steps`` steps, all stop together with the same message."""
from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vita_clip.data.dataset import EmptyStepGuard
from vita_clip.data.errors import SkippedSample, VideoDataError
from vita_clip.engine.batches import check_step_samples
from vita_clip.engine.distributed import DistInfo

LIMIT = 2


def steps_of(rank):
    """(samples, skipped) per step: rank 0 has nothing for steps 0-2 while rank 1 has data;
    from step 3 on neither has any, so the run must stop at step 4 on both."""
    gone = SkippedSample(index=rank, path=f"gone_{rank}.mp4", reason="file not found", listed_at=f"train.txt, line {rank + 1}")
    plan = []
    for step in range(6):
        empty = rank == 0 or step >= 3
        plan.append(([] if empty else [{"label": torch.zeros(2)}], [gone] if empty else []))
    return plan


def worker(rank, folder, store):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    guard, outcome = EmptyStepGuard(LIMIT), {"samples": []}
    try:
        for step, (micro, skipped) in enumerate(steps_of(rank)):
            try:
                outcome["samples"].append(check_step_samples(guard, step, micro, skipped, DistInfo(rank, 2, rank),
                                                             torch.device("cpu")))
            except VideoDataError as e:
                outcome["stopped"] = [step, str(e)]
                break
        (folder / f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.destroy_process_group()


def test_the_ranks_decide_empty_steps_together(tmp_path):
    # fork: the children start with the modules loaded (spawning re-imports torch: a minute here)
    mp.start_processes(worker, args=(tmp_path, tmp_path / "store"), nprocs=2, join=True, start_method="fork")
    outcomes = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert outcomes[0] == outcomes[1]
    assert outcomes[0]["samples"] == [2, 2, 2, 0]  # rank 0's empty steps count as steps with data
    step, message = outcomes[0]["stopped"]
    assert step == 4 and message == ("training data: 2 consecutive steps (up to step 5) had no readable video "
                                     "(data.max_empty_steps=2); last skipped: gone_0.mp4: file not found "
                                     "(listed in train.txt, line 1)")
