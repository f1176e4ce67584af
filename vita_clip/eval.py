"""``python -m vita_clip.eval``: the published evaluation protocols, as a table and JSON.

    python -m vita_clip.eval --checkpoint runs/k400/model.pt --protocol supervised \\
        --val-list k400/val.txt --data-root /data/k400 --views 4x3
    python -m vita_clip.eval --checkpoint runs/k400/model.pt --protocol zs-ucf101 --data-root /data/ucf101
    python -m vita_clip.eval --model vifi-clip-b16 --pretrained openai --protocol zs-hmdb51 --data-root /data/hmdb51

Protocols (label and split files ship with the package):

* ``supervised``: ``--val-list`` against the model's classes (or ``--classes``): top-1/top-5.
* ``zs-ucf101``, ``zs-hmdb51``: zero-shot on the three test splits, mean +- std;
  ``zs-k600``: the three K600 splits of 160 classes outside K400, mean +- std.
* ``b2n-k400``, ``b2n-hmdb51``, ``b2n-ucf101``, ``b2n-ssv2``: base-to-novel: accuracy on the
  base classes, on the novel classes, and their harmonic mean.
* ``fs-hmdb51``, ``fs-ucf101``, ``fs-ssv2``: the few-shot test sets (split 1 / validation).

Zero-shot classes are embedded with hand-written templates (``--templates``; default
``class_only``, the Vita-CLIP protocol) unless the model's own prompts can describe them
(ViFi-CLIP's template, a learned generic context).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .data.dataset import DataConfig, VideoDataset
from .data.protocols import class_names, split_classes, split_file
from .engine.evaluate import evaluate
from .vifi import ViFiCLIP
from .engine.trainer import resolve_classes


@dataclass(frozen=True)
class Protocol:
    """Named groups of (split, class list) evaluations and how their numbers combine."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (label shown, split name)
    combine: str  # "mean_std", "base_novel" or "single"


PROTOCOLS: dict[str, Protocol] = {
    "zs-ucf101": Protocol("zs-ucf101", tuple((f"split {k}", f"ucf101/val{k}") for k in (1, 2, 3)), "mean_std"),
    "zs-hmdb51": Protocol("zs-hmdb51", tuple((f"split {k}", f"hmdb51/val{k}") for k in (1, 2, 3)), "mean_std"),
    "zs-k600": Protocol("zs-k600", tuple((f"split {k}", f"k600/zs_split{k}") for k in (1, 2, 3)), "mean_std"),
    **{f"b2n-{d}": Protocol(f"b2n-{d}", (("base", f"base2novel/{d}/base_val"), ("novel", f"base2novel/{d}/novel_val")),
                            "base_novel") for d in ("k400", "hmdb51", "ucf101", "ssv2")},
    "fs-hmdb51": Protocol("fs-hmdb51", (("val", "hmdb51/val1"),), "single"),
    "fs-ucf101": Protocol("fs-ucf101", (("val", "ucf101/val1"),), "single"),
    "fs-ssv2": Protocol("fs-ssv2", (("val", "ssv2/validation"),), "single"),
}


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def combine(protocol: str, rows: list[dict]) -> dict:
    """The protocol's summary numbers from per-part results."""
    kind = PROTOCOLS[protocol].combine if protocol in PROTOCOLS else "single"
    top1 = [r["top1"] for r in rows]
    if kind == "mean_std":
        return {"top1_mean": statistics.mean(top1), "top1_std": statistics.pstdev(top1),
                "top5_mean": statistics.mean(r["top5"] for r in rows)}
    if kind == "base_novel":
        return {"base": top1[0], "novel": top1[1], "hm": harmonic_mean(top1[0], top1[1])}
    return {"top1": top1[0], "top5": rows[0]["top5"]}


def use_classes(model, classes: list[str], templates: str | None) -> str:
    """Point the model at ``classes``; returns how their text features are made."""
    if templates is not None:
        model.set_classes(classes, templates=templates)
        return f"templates {templates!r}"
    if classes == model.classnames and model.templates is None:
        return "the model's own prompts"
    try:
        model.set_classes(classes)
        return "the model's own prompts"
    except ValueError:  # class-specific contexts cannot describe new classes
        model.set_classes(classes, templates="class_only")
        return "templates 'class_only'"


def run_data_config(checkpoint: str | None) -> DataConfig | None:
    """The data recipe a checkpoint was trained with: from the ``config.yaml`` a training run
    writes beside ``model.pt`` (and beside its ``checkpoint-N`` folders)."""
    if not checkpoint:
        return None
    path = Path(checkpoint)
    for candidate in (path.parent / "config.yaml", path.parent.parent / "config.yaml"):
        if candidate.is_file():
            from .engine.config import load_config
            from .engine.trainer import data_config

            return data_config(load_config(candidate), train=False)
    return None


def default_data_config(model, frames: int | None = None) -> DataConfig:
    """The data recipe of the model's family at the model's resolution and clip length."""
    frames = frames or model.config.num_frames
    size = model.image_size[0]
    if isinstance(model, ViFiCLIP):
        return DataConfig.vifi_clip(num_frames=frames, size=size)
    return DataConfig.vita_clip(num_frames=frames, size=size)


def run(model, protocol: str, data_root: str, data: DataConfig, batch_size: int = 4, templates: str | None = None,
        val_list: str | None = None, classes: list[str] | None = None, device=None, num_workers: int = 2,
        limit: int | None = None) -> dict:
    """Evaluate ``model`` under ``protocol``; returns ``{"parts": [...], "summary": {...}}``."""
    if protocol == "supervised":
        if val_list is None:
            raise ValueError("protocol 'supervised' needs --val-list")
        parts = [("val", val_list, classes or model.classnames)]
    elif protocol in PROTOCOLS:
        parts = [(label, str(split_file(split)), class_names(split_classes(split)))
                 for label, split in PROTOCOLS[protocol].parts]
    else:
        raise ValueError(f"unknown protocol {protocol!r}; known: supervised, {', '.join(PROTOCOLS)}")
    rows = []
    for label, list_file, names in parts:
        how = use_classes(model, names, templates)
        dataset = VideoDataset(list_file, data_root, names, train=False, config=data)
        if limit is not None:
            dataset.entries = dataset.entries[:limit]
        result = evaluate(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers)
        rows.append({"part": label, "list": list_file, "classes": len(names), "text": how, **result.as_dict()})
    return {"protocol": protocol, "parts": rows, "summary": combine(protocol, rows)}


def format_table(results: dict) -> str:
    lines = [f"protocol {results['protocol']}",
             f"{'part':<10} {'classes':>7} {'videos':>7} {'skipped':>7} {'top-1':>7} {'top-5':>7} {'mean-cls':>8}  text features"]
    for r in results["parts"]:
        lines.append(f"{r['part']:<10} {r['classes']:>7} {r['videos']:>7} {r['skipped']:>7} "
                     f"{r['top1']:>7.2f} {r['top5']:>7.2f} {r['mean_class_accuracy']:>8.2f}  {r['text']}")
    summary = results["summary"]
    if "top1_mean" in summary:
        lines.append(f"top-1 {summary['top1_mean']:.2f} +- {summary['top1_std']:.2f} (mean +- std over splits)")
    elif "hm" in summary:
        lines.append(f"base {summary['base']:.2f}  novel {summary['novel']:.2f}  HM {summary['hm']:.2f}")
    return "\n".join(lines)


def load_or_create(checkpoint=None, model: str | None = None, pretrained: str | None = None,
                   classes=("placeholder",), default_model: str | None = None):
    """The model to evaluate or predict with: a vita-clip checkpoint (config, classes and
    weights), or the named model, optionally loading an original Vita-CLIP / ViFi-CLIP
    checkpoint. ``classes`` only seed the model; the protocol or caller sets the real ones."""
    from . import factory

    kwargs = {"pretrained": pretrained} if pretrained is not None else {}
    if checkpoint is not None and model is None:
        return factory.load_model(checkpoint, **kwargs)
    model = model or default_model
    if model is None:
        raise ValueError("give --checkpoint (a vita-clip checkpoint) or --model NAME [--checkpoint original.pth]")
    return factory.create_model(model, list(classes), checkpoint=checkpoint, **kwargs)


def parse_views(text: str) -> tuple[int, int]:
    try:
        clips, crops = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--views must look like 4x3 (clips x crops), got {text!r}") from None
    return clips, crops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vita_clip.eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--checkpoint", help="vita-clip checkpoint (model.pt or checkpoint-N folder), or with --model "
                                             "an original Vita-CLIP / ViFi-CLIP checkpoint")
    parser.add_argument("--model", help="model name to build (e.g. vifi-clip-b16 for zero-shot CLIP)")
    parser.add_argument("--pretrained", help="CLIP weights: open_clip tag or local file")
    parser.add_argument("--protocol", default="supervised", help="supervised or one of: " + ", ".join(PROTOCOLS))
    parser.add_argument("--data-root", default="", help="folder holding the videos the lists name")
    parser.add_argument("--val-list", help="supervised protocol: the test list")
    parser.add_argument("--classes", help="class list: a file or a shipped name (k400, ucf101, ...)")
    parser.add_argument("--templates", help="zero-shot templates: class_only, a_photo_of, video, or a string with {}")
    parser.add_argument("--views", default="1x1", help="temporal clips x spatial crops (default 1x1; K400: 4x3)")
    parser.add_argument("--frames", type=int, help="frames per clip (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, help="evaluate only the first N videos of each list (smoke tests)")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        clips, crops = parse_views(args.views)
        model = load_or_create(args.checkpoint, args.model, args.pretrained,
                               resolve_classes(args.classes) if args.classes else ("placeholder",))
        classes = resolve_classes(args.classes) if args.classes else None
        data = run_data_config(args.checkpoint) or default_data_config(model, args.frames)
        if args.frames:
            data = replace(data, sampling=replace(data.sampling, num_frames=args.frames))
        data = replace(data, sampling=replace(data.sampling, num_clips=clips),
                       transform=replace(data.transform, num_crops=crops))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
        results = run(model, args.protocol, args.data_root, data, args.batch_size, args.templates, args.val_list,
                      classes, device, args.workers, args.limit)
    except (ValueError, FileNotFoundError, KeyError) as err:
        parser.error(str(err))
    print(format_table(results))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
