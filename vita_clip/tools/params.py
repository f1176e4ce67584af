"""``python -m vita_clip.tools.params [MODEL ...]``: what each named model trains, without weights.

Builds every model on the meta device (no memory, no download) and prints its backbone,
clip length and parameter counts. Useful before a run ("how much do I train?") and as a
check that the package is installed.
"""
from __future__ import annotations

import argparse

from ..models.registry import count_parameters, create_model, get_model_config, list_models


def summarize(names: list[str], num_classes: int) -> list[dict]:
    classnames = [f"class {i}" for i in range(num_classes)]
    rows = []
    for name in names:
        config = get_model_config(name)
        counts = count_parameters(create_model(name, classnames, device="meta"))
        rows.append({"model": name, "backbone": config.backbone, "frames": config.num_frames, **counts})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vita_clip.tools.params", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"model names (default: all of {', '.join(list_models())})")
    parser.add_argument("--num-classes", type=int, default=400, help="classes of the text side (default: 400, K400)")
    args = parser.parse_args(argv)
    names = args.models or [n for n in list_models() if n not in ("vita-clip", "vifi-clip")]
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {list_models()}")
    rows = summarize(names, args.num_classes)
    header = f"{'model':<26} {'backbone':<12} {'frames':>6} {'total':>13} {'trainable':>13} {'frozen':>13}"
    print(f"Parameter counts with {args.num_classes} classes (meta device, nothing allocated)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<26} {r['backbone']:<12} {r['frames']:>6} {r['total']:>13,} {r['trainable']:>13,} {r['frozen']:>13,}")


if __name__ == "__main__":
    main()
