"""``python -m vita_clip.predict``: classify your own videos with your own class names.

    python -m vita_clip.predict videos/ --checkpoint runs/k400/model.pt --output preds.csv
    python -m vita_clip.predict "clips/**/*.mp4" --classes "surfing,juggling,cooking" --topk 3
    python -m vita_clip.predict clip.mp4 --classes-file my_classes.txt --model vita-clip-b16 --pretrained /weights/ViT-B-16.pt

Inputs are files, folders (searched recursively for video files) and glob patterns (quote
them), or ``--files-from list.txt`` (one path per line). Videos are decoded in ``--workers``
DataLoader workers and classified ``--batch-size`` at a time. ``--output preds.csv`` (or
``.jsonl``) is written as it goes: an interrupted run keeps its rows, and running the same
command again skips the videos already there (``--overwrite`` starts afresh). A video that
cannot be read is reported and skipped (``--on-error skip``, the default) or stops the run
(``--on-error raise``); a summary comes at the end.

Classes default to the checkpoint's. Without ``--checkpoint`` this is zero-shot CLIP
(``--model``, default ``vifi-clip-b16`` with the OpenAI weights). With a trained checkpoint,
its own prompts are used for classes it was trained on and hand-written templates
(``--templates``) for others; the first lines say which. The same is available in Python::

    from vita_clip.inference import predict
    predict(["clip.mp4"], ["surfing", "juggling"], checkpoint="runs/k400/model.pt")
"""
from __future__ import annotations

import argparse
import collections
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .cli import add_debug_flag, user_errors
from .data.classes import read_class_names
from .data.errors import VideoDataError, check_on_error, format_skip_report
from .inference import Prediction, Predictor, expand_video_paths, load_or_create, parse_views
from .precision import AUTO_HELP, PRECISIONS


class PredictionFile:
    """``preds.csv`` (``video,top1,p1,...``) or ``preds.jsonl`` (one :meth:`Prediction.as_dict`
    per line), appended batch by batch. The settings of the run are kept beside it
    (``<file>.settings.json``) so that a rerun only resumes a run with the same settings."""

    def __init__(self, path: str | os.PathLike, settings: dict, overwrite: bool = False):
        self.path = Path(path)
        self.kind = {".csv": "csv", ".jsonl": "jsonl"}.get(self.path.suffix.lower())
        if self.kind is None:
            raise ValueError(f"--output {path}: expected a .csv or .jsonl file name")
        self.topk = settings["topk"]
        self.settings_path = self.path.with_name(self.path.name + ".settings.json")
        self.done: set[str] = set()
        if self.path.exists() and not overwrite:
            self._resume(settings)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(self._header())
        self.settings_path.write_text(json.dumps(settings, indent=2))
        self.file = open(self.path, "a", encoding="utf-8", newline="")

    def _header(self) -> str:
        if self.kind == "jsonl":
            return ""
        return ",".join(["video"] + [f"{name}{i}" for i in range(1, self.topk + 1) for name in ("top", "p")]) + "\n"

    def _resume(self, settings: dict) -> None:
        previous = json.loads(self.settings_path.read_text()) if self.settings_path.is_file() else None
        if previous is None:
            raise ValueError(f"--output {self.path}: the file exists but was not written by this command "
                             f"({self.settings_path.name} is missing); use another --output or --overwrite")
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"--output {self.path} was written with other settings ({', '.join(changed)} differ); "
                             "use another --output, the same settings, or --overwrite")
        text = self.path.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]  # an interrupted write leaves a partial last line
        if self.kind == "csv":
            rows = list(csv.reader(io.StringIO(complete)))
            width = 1 + 2 * self.topk
            kept = [r for r in rows[1:] if len(r) == width]
            self.done = {os.path.abspath(r[0]) for r in kept}
        else:
            kept = []
            for line in complete.splitlines():
                try:
                    kept.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            self.done = {os.path.abspath(r["video"]) for r in kept if isinstance(r, dict) and "video" in r}
        if complete != text:
            self.path.write_text(complete, encoding="utf-8")

    def is_done(self, video: str) -> bool:
        return os.path.abspath(video) in self.done

    def write(self, predictions: list[Prediction]) -> None:
        if self.kind == "csv":
            writer = csv.writer(self.file)
            for p in predictions:
                writer.writerow([p.video] + [x for name, prob in p.top for x in (name, f"{prob:.6f}")])
        else:
            for p in predictions:
                self.file.write(json.dumps(p.as_dict()) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def summary(done: int, predicted: int, skipped: list, top1: collections.Counter, seconds: float, output) -> str:
    lines = [f"{predicted} videos predicted in {seconds:.1f} s ({predicted / max(seconds, 1e-9):.1f} videos/s)"
             + (f", {done} already in {output.path}" if done else "")
             + (f"; written to {output.path}" if output is not None else "")]
    if top1:
        lines.append("most frequent top-1 classes: " + ", ".join(f"{name} ({n})" for name, n in top1.most_common(5)))
    lines.append(format_skip_report(skipped, "videos skipped (unreadable; rerun retries them)"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vita_clip.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("videos", nargs="*", help="video files, folders (recursive) or glob patterns")
    parser.add_argument("--files-from", help="a text file with one video path per line")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--classes", help='comma-separated class names, e.g. "surfing,juggling" (default: the checkpoint\'s)')
    names.add_argument("--classes-file", help="class names: one per line, an id,name CSV or a JSON list")
    parser.add_argument("--checkpoint", help="a vita-clip checkpoint (or, with --model, an original one)")
    parser.add_argument("--model", help="model to build without a vita-clip checkpoint (default: vifi-clip-b16)")
    parser.add_argument("--pretrained", help="CLIP weights: open_clip tag (default: the model's) or a local file")
    parser.add_argument("--templates", help="class_only, a_photo_of, video, or a template string with {}")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--views", help="temporal clips x spatial crops, e.g. 3x1 (default: the model's recipe)")
    parser.add_argument("--frames", type=int, help="frames per clip (default: the model's)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=AUTO_HELP)
    parser.add_argument("--batch-size", type=int, default=8, help="videos per model call")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding processes")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    parser.add_argument("--output", help="write predictions to this .csv or .jsonl as they are made; reruns resume it")
    parser.add_argument("--overwrite", action="store_true", help="start --output afresh instead of resuming it")
    parser.add_argument("--on-error", default="skip", choices=("skip", "raise"),
                        help="an unreadable video: report and skip it (default), or stop")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table (without --output)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    with user_errors(parser.prog, args.debug):
        check_on_error(args.on_error)
        specs = list(args.videos)
        if args.files_from:
            specs += [line.strip() for line in Path(args.files_from).read_text().splitlines() if line.strip()]
        if not specs:
            raise ValueError("give video files, folders or patterns (or --files-from)")
        if args.topk < 1 or args.batch_size < 1:
            raise ValueError("--topk and --batch-size must be >= 1")
        videos = expand_video_paths(specs)
        classes = (args.classes.split(",") if args.classes else
                   read_class_names(args.classes_file) if args.classes_file else None)
        if classes is None and (args.checkpoint is None or args.model is not None):
            raise ValueError("give --classes or --classes-file (only a vita-clip --checkpoint brings its own classes)")
        net = load_or_create(args.checkpoint, args.model, args.pretrained, classes or ("placeholder",),
                             default_model="vifi-clip-b16")
        predictor = Predictor(net, classes, args.templates, checkpoint=args.checkpoint, frames=args.frames,
                              views=parse_views(args.views) if args.views else None, device=args.device,
                              precision=args.precision)
        clips, crops = predictor.views
        print(f"{len(predictor.classes)} classes ({'given' if classes else 'the checkpoint'}'s); text features: "
              f"{predictor.text_source}; {clips}x{crops} views of {predictor.data.sampling.num_frames} frames; "
              f"{predictor.precision} on {predictor.device}", file=sys.stderr)
        output = None
        if args.output:
            settings = {"checkpoint": os.path.abspath(args.checkpoint) if args.checkpoint else None,
                        "model": args.model, "pretrained": args.pretrained, "classes": predictor.classes,
                        "text": predictor.text_source, "topk": min(args.topk, len(predictor.classes)),
                        "views": [clips, crops], "frames": predictor.data.sampling.num_frames,
                        "precision": predictor.precision}
            output = PredictionFile(args.output, settings, args.overwrite)
        todo = [v for v in videos if output is None or not output.is_done(v)]
        done = len(videos) - len(todo)
        if done:
            print(f"{done} of {len(videos)} videos are already in {args.output}: skipping them", file=sys.stderr)
        results: list[Prediction] = []
        skipped: list = []
        top1: collections.Counter = collections.Counter()
        start = time.perf_counter()
        bar = tqdm(total=len(todo), unit="video", desc="predict", file=sys.stderr, dynamic_ncols=True, disable=None)
        try:
            for predictions, bad in predictor.predict_batches(todo, args.topk, args.batch_size, args.workers,
                                                              args.on_error):
                skipped += bad
                top1.update(p.top[0][0] for p in predictions)
                if output is not None:
                    output.write(predictions)
                elif not args.json:
                    for p in predictions:
                        bar.write(p.video + "".join(f"\n  {prob:7.2%}  {name}" for name, prob in p.top))
                else:
                    results += predictions
                bar.update(len(predictions) + len(bad))
        finally:
            bar.close()
            if output is not None:
                output.close()
        if todo and len(skipped) == len(todo):
            first = skipped[0]
            raise VideoDataError(first.path, f"{first.reason} (and no other video could be read: "
                                 f"{len(skipped)} of {len(todo)} skipped)" if len(skipped) > 1 else first.reason)
    if args.json and output is None:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    print(summary(done, sum(top1.values()), skipped, top1, time.perf_counter() - start, output), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
