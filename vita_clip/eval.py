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
import sys
from pathlib import Path

import torch

from .cli import add_debug_flag, user_errors
from .data.protocols import PROTOCOLS, resolve_classes
from .engine.evaluate import evaluate_protocol
from .inference import load_or_create, model_data_config, parse_views


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
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    with user_errors(parser.prog, args.debug):
        clips, crops = parse_views(args.views)
        model = load_or_create(args.checkpoint, args.model, args.pretrained,
                               resolve_classes(args.classes) if args.classes else ("placeholder",))
        classes = resolve_classes(args.classes) if args.classes else None
        data = model_data_config(model, args.checkpoint, args.frames, (clips, crops))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
        results = evaluate_protocol(model, args.protocol, args.data_root, data, args.batch_size, args.templates,
                                    args.val_list, classes, device, args.workers, args.limit)
    print(format_table(results))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
