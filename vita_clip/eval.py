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

The videos may be in the flat layout the lists name (``data_root/v_ApplyEyeMakeup_g01_c01.avi``)
or in the official class-folder layout (``data_root/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi``,
``data_root/brush_hair/<file>.avi``, ``data_root/val/abseiling/<id>.mp4``), detected per list.
Views default to the checkpoint's run (``eval_views``), else the model family's recipe
(Vita-CLIP 3x1, ViFi-CLIP 1x1). Under ``torchrun --nproc_per_node N`` each process evaluates a
shard and the numbers are gathered. ``--output results.json`` also writes
``results_confusion_<part>.png`` and ``results_per_class.csv``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch

from .cli import add_debug_flag, user_errors
from .data.protocols import PROTOCOLS, resolve_classes
from .engine.distributed import cleanup, init_distributed
from .engine.evaluate import evaluate_protocol
from .engine.metrics import plot_confusion, setup_logging
from .inference import load_or_create, model_data_config, parse_views
from .precision import AUTO_HELP, PRECISIONS


def format_table(results: dict) -> str:
    views = results.get("views")
    lines = [f"protocol {results['protocol']}" + (f": {views[0]}x{views[1]} views of {results['frames']} frames, "
                                                    f"{results['precision']}" if views else ""),
             f"{'part':<10} {'layout':<12} {'classes':>7} {'videos':>7} {'skipped':>7} {'top-1':>7} {'top-5':>7} "
             f"{'mean-cls':>8}  text features"]
    for r in results["parts"]:
        lines.append(f"{r['part']:<10} {r.get('layout', ''):<12} {r['classes']:>7} {r['videos']:>7} {r['skipped']:>7} "
                     f"{r['top1']:>7.2f} {r['top5']:>7.2f} {r['mean_class_accuracy']:>8.2f}  {r['text']}")
    summary = results["summary"]
    if "top1_mean" in summary:
        lines.append(f"top-1 {summary['top1_mean']:.2f} +- {summary['top1_std']:.2f} (mean +- std over splits)")
    elif "hm" in summary:
        lines.append(f"base {summary['base']:.2f}  novel {summary['novel']:.2f}  HM {summary['hm']:.2f}")
    return "\n".join(lines)


def format_per_class(results: dict) -> str:
    """Per-class top-1 of each part, worst first, with the class names."""
    lines = []
    for r in results["parts"]:
        counts = [sum(row) for row in r["confusion"]]
        lines.append(f"{r['part']}: per-class top-1 (worst first)")
        order = sorted((c for c, n in enumerate(counts) if n), key=lambda c: r["per_class_top1"][c])
        for c in order:
            lines.append(f"  {r['per_class_top1'][c]:7.2f}  {counts[c]:>5} videos  {r['class_names'][c]}")
        absent = [r["class_names"][c] for c, n in enumerate(counts) if not n]
        if absent:
            lines.append(f"  (no videos: {', '.join(absent)})")
    return "\n".join(lines)


def write_outputs(results: dict, output: Path) -> list[Path]:
    """The JSON, a per-class CSV and a confusion-matrix PNG per part, beside each other."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    written = [output]
    table = output.with_name(f"{output.stem}_per_class.csv")
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["part", "class_id", "class", "videos", "top1"])
        for r in results["parts"]:
            for c, (name, row) in enumerate(zip(r["class_names"], r["confusion"])):
                acc = r["per_class_top1"][c]
                writer.writerow([r["part"], c, name, sum(row), "" if acc is None else f"{acc:.4f}"])
    written.append(table)
    for r in results["parts"]:
        png = output.with_name(f"{output.stem}_confusion_{r['part'].replace(' ', '')}.png")
        if plot_confusion(r["confusion"], r["class_names"], png, f"{results['protocol']} {r['part']}: top-1 {r['top1']:.2f}"):
            written.append(png)
    return written


def run(args) -> tuple[dict, bool]:
    """The evaluation the arguments describe (each torchrun rank a shard); ``(results, is_main)``."""
    dist_info = None
    try:
        views = parse_views(args.views) if args.views else None
        model = load_or_create(args.checkpoint, args.model, args.pretrained,
                               resolve_classes(args.classes) if args.classes else ("placeholder",))
        classes = resolve_classes(args.classes) if args.classes else None
        data = model_data_config(model, args.checkpoint, args.frames, views)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        dist_info = init_distributed(device)
        setup_logging(None, dist_info.is_main)  # warnings to stderr on rank 0 only
        model.to(device)
        results = evaluate_protocol(model, args.protocol, args.data_root, data, args.batch_size, args.templates,
                                    args.val_list, classes, device, args.workers, args.limit, args.precision,
                                    dist_info, progress=True)
        return results, dist_info.is_main
    finally:
        if dist_info is not None:
            cleanup(dist_info)


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
    parser.add_argument("--views", help="temporal clips x spatial crops, e.g. 4x3 (default: the checkpoint's run, "
                                         "else the model family's: Vita-CLIP 3x1, ViFi-CLIP 1x1)")
    parser.add_argument("--frames", type=int, help="frames per clip (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, help="evaluate only the first N videos of each list (smoke tests)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=AUTO_HELP)
    parser.add_argument("--per-class", action="store_true", help="print the per-class accuracy table")
    parser.add_argument("--output", help="write the results as JSON here (with a per-class CSV and confusion PNGs)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    with user_errors(parser.prog, args.debug):
        results, is_main = run(args)
    if not is_main:
        return 0
    print(format_table(results))
    for r in results["parts"]:
        if r["skipped_videos"]:
            print(f"{r['part']}: {r['skipped']} videos skipped, e.g. {r['skipped_videos'][0]}", file=sys.stderr)
    if args.per_class:
        print(format_per_class(results))
    if args.output:
        print("wrote " + ", ".join(str(p) for p in write_outputs(results, Path(args.output))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
