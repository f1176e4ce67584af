"""The training run behind ``python -m vita_clip.train``."""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from ..checkpoints.io import save_checkpoint
from ..checkpoints.training import latest_intact_checkpoint, restore_training_state, save_training_state
from ..config_builder import config_to_dict
from ..data.dataset import EmptyStepGuard, VideoDataset, check_readable
from ..data.errors import format_skip_report
from ..data.protocols import SPLIT_FILES, resolve_classes, split_file
from ..errors import ResumeMismatchError
from ..models.registry import create_model, get_model_config
from ..precision import resolve_precision
from .batches import StepBatches, check_step_samples
from .config import DEMO_PRETRAINED, TrainConfig
from .distributed import DistInfo, all_gather_lists, barrier, broadcast_, cleanup, init_distributed
from .evaluate import evaluate
from .metrics import MetricsWriter, plot_metrics, setup_logging
from .optim import build_optimizer, build_scheduler, lr_factor
from .sampler import StepSampler
from .step import train_step

logger = logging.getLogger("vita_clip")


def resolve_device(name: str, dist_info: DistInfo | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local)
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available on this machine; use device=cpu or auto")
    return device


def prepare_data(config: TrainConfig, dist_info: DistInfo) -> tuple[TrainConfig, list[str]]:
    """Fill in the demo dataset if asked for; resolve shipped split names; check the model
    options, the lists and the classes before anything slow (the demo backbone) is made."""
    try:
        get_model_config(config.model.name, **config.model.options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"model.options: {err}") from None
    data = config.data
    if data.demo:
        from ..demo.dataset import make_demo_dataset

        if dist_info.is_main:
            logger.info("data.demo: training on the generated demo dataset in %s", data.demo_dir)
        demo = main_process_first(dist_info, lambda main: make_demo_dataset(data.demo_dir, verbose=main))
        data = replace(data, train_list=str(demo.train_list), val_list=str(demo.val_list),
                       data_root=str(demo.root), classes=str(demo.class_file))
        config = replace(config, data=data)
    if data.train_list is None:
        raise ValueError("data.train_list: give a video list (or a shipped split name), or set data.demo=true")
    for name in ("train_list", "val_list"):
        path = getattr(data, name)
        if path is not None and not Path(path).is_file():
            if path in SPLIT_FILES:
                data = replace(data, **{name: str(split_file(path))})
                config = replace(config, data=data)
                continue
            raise FileNotFoundError(f"data.{name}: {path!r} is neither a file nor a shipped split "
                                    f"(e.g. {', '.join(list(SPLIT_FILES)[:3])}, ...)")
    classnames = resolve_classes(data.classes)
    if config.model.pretrained == DEMO_PRETRAINED:
        config = replace(config, model=replace(config.model, pretrained=str(_demo_backbone(config, dist_info))))
    return config, classnames


def _demo_backbone(config: TrainConfig, dist_info: DistInfo) -> Path:
    """``model.pretrained: demo``: the tiny CLIP pretrained on rendered frames, made once (by the
    main process) and cached in ``data.demo_dir``."""
    from ..demo.backbone import demo_backbone

    backbone = get_model_config(config.model.name, **config.model.options).backbone
    return main_process_first(dist_info, lambda main: demo_backbone(config.data.demo_dir, backbone,
                                                                    log=logger.info if main else None))


def main_process_first(dist_info: DistInfo, make):
    """``make(main)`` on the main process, then on the others, which find its cached result
    (a generated dataset, pretrained weights) complete instead of building it again."""
    if dist_info.is_main:
        result = make(True)
    barrier(dist_info)
    if not dist_info.is_main:
        result = make(False)
    return result


def build_model(config: TrainConfig, classnames: list[str], device: torch.device):
    options = dict(config.model.options)
    options.setdefault("num_frames", config.data.sampling.num_frames)
    kwargs = {} if config.model.pretrained == "default" else {"pretrained": config.model.pretrained}
    model = create_model(config.model.name, classnames, checkpoint=config.model.checkpoint, **kwargs, **options)
    return model.to(device)


# Run-config keys that change how a run is watched, not what it computes: a resume may differ in these.
BOOKKEEPING_KEYS = frozenset({"output_dir", "log_every", "eval_every", "save_every", "keep_checkpoints", "device",
                              "compile", "data.num_workers", "data.demo", "data.demo_dir"})
RESUME_MODES = (True, False, "force")


def config_changes(stored: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every run-config value that differs, bookkeeping keys aside."""
    changes = []
    for key in sorted(set(stored) | set(new)):
        dotted = prefix + key
        if dotted in BOOKKEEPING_KEYS:
            continue
        old, value = stored.get(key), new.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            changes += config_changes(old, value, dotted + ".")
        elif old != value:
            changes.append(f"{dotted}: {old!r} -> {value!r}")
    return changes


def train(config: TrainConfig, resume: bool | str = True) -> dict:
    """Run (or resume) training as described by ``config``; returns the final metrics.

    ``resume``: ``True`` continues the newest intact checkpoint in ``output_dir`` when its run
    config equals this one (else :class:`~vita_clip.errors.ResumeMismatchError` lists the
    keys), ``"force"`` continues it with this config's values (optimizer settings, schedule and
    precision included; ``results.json`` records the changes), ``False`` starts afresh.
    ``config.precision="auto"`` is resolved on the run's device first, so a resume on a device
    where ``auto`` means another precision is refused like any other changed setting."""
    if resume not in RESUME_MODES:
        raise ValueError(f"resume: expected true, false or 'force', got {resume!r}")
    device = resolve_device(config.device)
    # the concrete precision is what the run records and what a resume is compared against
    config = replace(config, precision=resolve_precision(config.precision, device))
    dist_info = init_distributed(device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(config, resume, device, dist_info)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        cleanup(dist_info)


def make_deterministic(seed: int) -> dict:
    """Seed every generator and ask for deterministic kernels; returns what ``results.json``
    records of it. Called right before the model is built, so work done before (generating the
    demo data, pretraining its backbone) cannot shift the random initialisation."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    return {"seed": seed, "deterministic_algorithms": True, "torch_threads": torch.get_num_threads(),
            "data_randomness": "per sample from (data seed, epoch, index): independent of workers",
            "torch": torch.__version__}


def _resume_point(out: Path, config: TrainConfig, resume, dist_info: DistInfo):
    """The intact checkpoint to continue, after checking its run config against this one."""
    if resume is False:
        return None, []
    report = logger.warning if dist_info.is_main else None
    found = latest_intact_checkpoint(out, report=report)
    if found is None:
        return None, []
    path, state, _ = found
    changes = config_changes(state.get("run_config", {}), config_to_dict(config))
    if changes and resume != "force":
        raise ResumeMismatchError(
            f"{out} holds a run with other settings ({'; '.join(changes)}); resuming would continue the old "
            f"one: pass --resume force (train(..., resume='force')) to continue it with the new values, "
            f"or choose a new output_dir")
    if changes and dist_info.is_main:
        logger.warning("resume force: continuing %s with changed settings: %s", path, "; ".join(changes))
    return found, changes


def _train(config: TrainConfig, resume, device: torch.device, dist_info: DistInfo) -> dict:
    out = Path(config.output_dir)
    setup_logging(out, dist_info.is_main)
    config, classnames = prepare_data(config, dist_info)
    found, changes = _resume_point(out, config, resume, dist_info)
    determinism = make_deterministic(config.seed)
    train_set = VideoDataset(config.data.train_list, config.data.data_root, classnames, train=True,
                             config=config.data.data_config(config.seed))
    check_readable(train_set)  # a wrong data_root stops here, with one message
    val_set = None
    if config.data.val_list is not None:
        val_set = VideoDataset(config.data.val_list, config.data.data_root, classnames, train=False,
                               config=config.data.data_config(config.seed, test_views=config.eval_views))

    model = build_model(config, classnames, device)
    # the recipe travels in every checkpoint: eval and predict sample as the run evaluated
    model.data_config = config.data.data_config(config.seed, test_views=config.eval_views)
    if model.image_size[0] != config.data.transform.size:
        raise ValueError(f"data.transform.size={config.data.transform.size} but the model {config.model.name!r} "
                         f"takes {model.image_size[0]}x{model.image_size[1]} frames")
    params = [p for p in model.parameters() if p.requires_grad]
    broadcast_([p.data for p in params], dist_info)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.steps)
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" and device.type == "cuda" else None
    forward_model = torch.compile(model) if config.compile else model

    start = 0
    if found is not None:
        latest, state, weights = found
        start = restore_training_state(latest, model, optimizer, scheduler if not changes else None, scaler,
                                       read=(state, weights))
        if changes:  # forced: this config's optimizer settings and schedule from here on
            _apply_optim_settings(optimizer, scheduler, config, start)
        logger.info("resumed from %s (step %d of %d)", latest, start, config.steps)
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        logger.info("model %s: %s trainable of %s parameters; %d classes; %d training videos",
                    config.model.name, f"{sum(p.numel() for p in params):,}",
                    f"{sum(p.numel() for p in model.parameters()):,}", len(classnames), len(train_set))
    metrics = MetricsWriter(out, enabled=dist_info.is_main, resume_step=start)

    sampler = StepSampler(len(train_set), config.batch_size, config.steps, config.seed,
                          dist_info.rank, dist_info.world_size, start_step=start)
    batches = StepBatches(train_set, sampler, config.micro_batch_size, num_workers=config.data.num_workers,
                          pin_memory=device.type == "cuda", device=device)
    bar = tqdm(total=config.steps, initial=start, desc="train", disable=not dist_info.is_main, dynamic_ncols=True)
    skipped_total: list = []
    odd_total: list = []
    empty_steps = EmptyStepGuard(config.data.max_empty_steps)
    window = {"loss": 0.0, "correct": 0, "samples": 0, "time": time.perf_counter()}
    grad_norm = None
    for step, micro, skipped, odd in batches:
        skipped_total += skipped
        odd_total += odd
        done = step + 1
        # decided on the samples of all processes: they skip or stop together
        samples = check_step_samples(empty_steps, step, micro, skipped, dist_info, device)
        if samples:
            micro = [(b["video"].to(device, non_blocking=True), b["label"].to(device, non_blocking=True)) for b in micro]
            result = train_step(forward_model, micro, optimizer, scaler, config.precision,
                                config.optim.max_grad_norm, dist_info, params, global_samples=samples)
            window["loss"] += result.loss * result.samples
            window["correct"] += result.correct
            window["samples"] += result.samples
            grad_norm = result.grad_norm
            scheduler.step()
        else:  # no process has a readable video: no optimizer step (it would still move the weights)
            logger.warning("step %d: no readable video in the batch; the step is skipped", done)
            with warnings.catch_warnings():  # the schedule follows the step number, stepped or not
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                scheduler.step()
        bar.update(1)
        if done % config.log_every == 0 or done == config.steps:
            elapsed = time.perf_counter() - window["time"]
            n = max(window["samples"], 1)
            values = {"loss": window["loss"] / n, "top1": 100 * window["correct"] / n,
                      "lr": optimizer.param_groups[0]["lr"], "videos_per_s": window["samples"] / max(elapsed, 1e-9),
                      "skipped": len(skipped_total)}
            if grad_norm is not None:
                values["grad_norm"] = grad_norm
            metrics.write(done, "train", values)
            bar.set_postfix(loss=f"{values['loss']:.3f}", acc=f"{values['top1']:.1f}", lr=f"{values['lr']:.2e}",
                            vid_s=f"{values['videos_per_s']:.1f}")
            window = {"loss": 0.0, "correct": 0, "samples": 0, "time": time.perf_counter()}
        if val_set is not None and config.eval_every and done % config.eval_every == 0 and done < config.steps:
            result_val = evaluate(model, val_set, batch_size=config.micro_batch_size, device=device,
                                  precision=config.precision, dist_info=dist_info, num_workers=config.data.num_workers)
            metrics.write(done, "val", {"top1": result_val.top1, "top5": result_val.top5})
            logger.info("step %d: val top-1 %.2f%%, top-5 %.2f%%", done, result_val.top1, result_val.top5)
        if config.save_every and done % config.save_every == 0 and done < config.steps:
            _save(out, done, model, optimizer, scheduler, scaler, config, dist_info)
    bar.close()
    if start < config.steps:
        _save(out, config.steps, model, optimizer, scheduler, scaler, config, dist_info)
    # every process's records, each odd video once (a video sampled again is odd again)
    skipped_total = all_gather_lists(skipped_total, dist_info)
    odd_total = list(dict.fromkeys(all_gather_lists(odd_total, dist_info)))
    if skipped_total and dist_info.is_main:
        logger.warning(format_skip_report(skipped_total, "training videos skipped"))
    if odd_total and dist_info.is_main:
        logger.warning(format_skip_report(odd_total, "training videos used but odd"))

    final: dict = {"steps": config.steps, "skipped_train_videos": len(skipped_total),
                   "odd_train_videos": len(odd_total), "determinism": determinism}
    if changes:
        final["resumed_with_changes"] = changes
    if val_set is not None:
        bar = tqdm(total=len(val_set), desc="eval", disable=not dist_info.is_main, dynamic_ncols=True)
        result_val = evaluate(model, val_set, batch_size=config.micro_batch_size, device=device,
                              precision=config.precision, dist_info=dist_info, num_workers=config.data.num_workers,
                              progress=bar)
        bar.close()
        metrics.write(config.steps, "val", {"top1": result_val.top1, "top5": result_val.top5})
        final["val"] = {**result_val.as_dict(), "views": list(config.eval_views)}
        logger.info("final validation (%d clips x %d crops): top-1 %.2f%%, top-5 %.2f%% on %d videos",
                    *config.eval_views, result_val.top1, result_val.top5, result_val.videos)
        if result_val.skipped:
            logger.warning(format_skip_report(result_val.skipped, "validation videos skipped"))
    if dist_info.is_main:
        save_checkpoint(model, out / "model.pt")
        (out / "results.json").write_text(json.dumps(final, indent=2))
        plot = plot_metrics(out / "metrics.csv", out / "curves.png")
        logger.info("wrote %s, %s%s", out / "model.pt", out / "results.json", f", {plot}" if plot else "")
    metrics.close()
    barrier(dist_info)
    return final


def _apply_optim_settings(optimizer, scheduler, config: TrainConfig, step: int) -> None:
    """A forced resume: the restored optimizer state (moments) with this config's settings."""
    optim = config.optim
    for group in optimizer.param_groups:
        group.update(weight_decay=optim.weight_decay, betas=tuple(optim.betas), eps=optim.eps, initial_lr=optim.lr,
                     lr=optim.lr * lr_factor(step, config.steps, optim.warmup_steps, optim.min_lr_ratio))
    scheduler.base_lrs = [optim.lr for _ in optimizer.param_groups]
    scheduler.last_epoch = step


def _save(out, step, model, optimizer, scheduler, scaler, config, dist_info) -> None:
    if dist_info.is_main:
        path = save_training_state(out, step, model, optimizer, scheduler, scaler, config_to_dict(config),
                                   keep=config.keep_checkpoints)
        logger.info("saved %s", path)
    barrier(dist_info)
