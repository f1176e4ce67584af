"""``python -m vita_clip.train``: train Vita-CLIP or ViFi-CLIP.

    python -m vita_clip.train                                  # the demo: generated videos, tiny model, CPU
    python -m vita_clip.train --config vita_clip_k400_b16_8f data.train_list=... data.val_list=... data.data_root=...
    torchrun --nproc-per-node 8 -m vita_clip.train --config vita_clip_k400_b16_8f --fused ...

``--config`` takes a YAML file or the name of a shipped config (see ``--list-configs``);
``KEY=VALUE`` arguments override any config key (``optim.lr=1e-3``, ``data.sampling.num_frames=16``).
A run resumes from the newest intact checkpoint in its output directory when that run had the
same settings; other settings are refused with the differing keys (``--resume force`` continues
it with the new ones, ``--resume never`` / ``--no-resume`` starts afresh).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .cli import add_debug_flag, user_errors
from .precision import AUTO_HELP, PRECISIONS

CONFIG_DIR = Path(__file__).parent / "configs"


def config_path(name: str) -> Path:
    """A YAML path, or the shipped config of that name."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"--config {name!r}: no such file and no shipped config of that name (shipped: {known})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vita_clip.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", default="demo", help="YAML file or shipped config name (default: demo)")
    parser.add_argument("--fused", action="store_true", help="fused prompt-attention kernels (Vita-CLIP; ViFi-CLIP prompts)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help=f"mixed precision of the training and evaluation passes (config: precision, default auto); "
                             f"{AUTO_HELP}. The run records the resolved one; resuming with another is refused")
    parser.add_argument("--output-dir", help="where checkpoints, logs, metrics and plots go (config: output_dir)")
    parser.add_argument("--resume", choices=("auto", "force", "never"), default="auto",
                        help="auto (default): continue the run in output_dir if its settings are the same; "
                             "force: continue it with these settings; never: start from scratch")
    parser.add_argument("--no-resume", action="store_true", help="the same as --resume never")
    parser.add_argument("--list-configs", action="store_true", help="print the shipped config names and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-3")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.list_configs:
        for path in sorted(CONFIG_DIR.glob("*.yaml")):
            print(f"{path.stem:<32} {path.read_text().splitlines()[0].lstrip('# ')}")
        return 0

    from .engine.config import load_config
    from .engine.trainer import train
    from .models.registry import family_of

    overrides = list(args.overrides)
    if args.fused:
        overrides.append("model.options.fused=true")
    if args.precision:
        overrides.append(f"precision={args.precision}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    resume = {"auto": True, "force": "force", "never": False}["never" if args.no_resume else args.resume]
    with user_errors(parser.prog, args.debug, pretrained_flag="model.pretrained=PATH"):
        config = load_config(config_path(args.config), overrides)
        if args.fused and not family_of(config.model.name).supports_fused:
            raise ValueError(f"--fused applies to models with fused kernels (Vita-CLIP, ViFi-CLIP); model.name is "
                             f"{config.model.name!r}")
        result = train(config, resume=resume)
    if "val" in result and os.environ.get("RANK", "0") == "0":
        print(f"validation top-1 {result['val']['top1']:.2f}%  top-5 {result['val']['top5']:.2f}%  "
              f"({result['val']['videos']} videos)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
