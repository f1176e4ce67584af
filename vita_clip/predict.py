"""``python -m vita_clip.predict``: classify your own videos with your own class names.

    python -m vita_clip.predict clip1.mp4 clip2.webm --classes "surfing,juggling,cooking"
    python -m vita_clip.predict clip.mp4 --classes-file my_classes.txt --checkpoint runs/k400/model.pt
    python -m vita_clip.predict clip.mp4 --classes "a,b" --model vita-clip-b16 --pretrained /weights/ViT-B-16.pt

Without ``--checkpoint`` this is zero-shot CLIP (``--model``, default ``vifi-clip-b16`` with the
OpenAI weights: frame-wise CLIP averaged over time, "a photo of a {}." prompts). With a trained
checkpoint, its own prompts are used for classes it was trained on and hand-written templates
(``--templates``) for others. Runs on a CPU. The same is available in Python::

    from vita_clip.inference import predict
    predict(["clip.mp4"], ["surfing", "juggling"], checkpoint="runs/k400/model.pt")
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import add_debug_flag, user_errors
from .data.classes import read_class_names
from .inference import parse_views, predict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vita_clip.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("videos", nargs="+", help="video files")
    names = parser.add_mutually_exclusive_group(required=True)
    names.add_argument("--classes", help='comma-separated class names, e.g. "surfing,juggling"')
    names.add_argument("--classes-file", help="class names: one per line, an id,name CSV or a JSON list")
    parser.add_argument("--checkpoint", help="a vita-clip checkpoint (or, with --model, an original one)")
    parser.add_argument("--model", help="model to build without a vita-clip checkpoint (default: vifi-clip-b16)")
    parser.add_argument("--pretrained", help="CLIP weights: open_clip tag (default: the model's) or a local file")
    parser.add_argument("--templates", help="class_only, a_photo_of, video, or a template string with {}")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--views", default="1x1", help="temporal clips x spatial crops, e.g. 3x1")
    parser.add_argument("--frames", type=int, help="frames per clip (default: the model's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    with user_errors(parser.prog, args.debug):
        classes = args.classes.split(",") if args.classes else read_class_names(args.classes_file)
        for video in args.videos:
            if not Path(video).is_file():
                raise FileNotFoundError(f"{video}: no such video file")
        results = predict(args.videos, classes, checkpoint=args.checkpoint, model=args.model,
                          pretrained=args.pretrained, templates=args.templates, topk=args.topk,
                          views=parse_views(args.views), frames=args.frames)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            print(r.video)
            for name, p in r.top:
                print(f"  {p:7.2%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
