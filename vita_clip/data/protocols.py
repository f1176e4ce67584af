"""The published class lists and evaluation splits, shipped inside the package, found by name.

Files under ``vita_clip/resources/`` (see its README for provenance):

* ``labels/*.csv`` (``id,name``): ViFi-CLIP's class lists, including the base/novel halves
  (re-indexed from 0 within each half) and the three 160-class K600 zero-shot splits;
* ``classes/*.txt``: Vita-CLIP's one-name-per-line lists (HMDB51 with underscores);
* ``splits/**.txt`` (``path label``): zero-shot, base-to-novel and few-shot-base splits.

Names (see :func:`available`):

* class lists: ``k400``, ``k600``, ``ucf101``, ``hmdb51``, ``ssv2``, ``<dataset>/base``,
  ``<dataset>/novel`` (all but k600), ``k600/zs_split{1,2,3}``, ``vita/<dataset>`` (k400, k600,
  ucf101, hmdb51);
* splits: ``ucf101/val{1,2,3}``, ``hmdb51/val{1,2,3}``, ``k600/zs_split{1,2,3}``,
  ``ssv2/validation``, ``base2novel/<dataset>/{base_train,base_val,novel_val,fs_base_s{1,2,3}_train}``
  (no ``base_train`` for k400: use ``fs_base_s*_train``).

Each split knows the class list its labels index (:func:`split_classes`). Video paths in the
splits are relative: give the folder holding your copy of the videos as ``data_root``, in the
flat layout the lists name or in the official class-folder layout (:func:`locate_videos`,
:data:`LAYOUT_HELP`).

The evaluation protocols (:data:`PROTOCOLS`) name the splits they evaluate and how their numbers
combine (:func:`combine`): mean +- std over splits, or base / novel and their harmonic mean.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from .classes import read_class_names

_B2N_DATASETS = {"k400": "k400", "hmdb51": "hmdb", "ucf101": "ucf", "ssv2": "ssv2"}

LABEL_FILES: dict[str, str] = {
    "k400": "labels/kinetics_400_labels.csv",
    "k400/base": "labels/kinetics_400_base_labels.csv",
    "k400/novel": "labels/kinetics_400_novel_labels.csv",
    "k600": "labels/kinetics_600_labels.csv",
    "ucf101": "labels/ucf_101_labels.csv",
    "ucf101/base": "labels/ucf_101_base_labels.csv",
    "ucf101/novel": "labels/ucf_101_novel_labels.csv",
    "hmdb51": "labels/hmdb_51_labels.csv",
    "hmdb51/base": "labels/hmdb_51_base_labels.csv",
    "hmdb51/novel": "labels/hmdb_51_novel_labels.csv",
    "ssv2": "labels/ssv2_labels.csv",
    "ssv2/base": "labels/ssv2_174_base_labels.csv",
    "ssv2/novel": "labels/ssv2_174_novel_labels.csv",
    **{f"k600/zs_split{k}": f"labels/ZS_split{k}_K600.csv" for k in (1, 2, 3)},
    **{f"vita/{d}": f"classes/{d}_classes.txt" for d in ("k400", "k600", "ucf101", "hmdb51")},
}

# split name -> (file, name of the class list its labels index)
SPLIT_FILES: dict[str, tuple[str, str]] = {
    **{f"ucf101/val{k}": (f"splits/ucf_splits/val{k}.txt", "ucf101") for k in (1, 2, 3)},
    **{f"hmdb51/val{k}": (f"splits/hmdb_splits/val{k}.txt", "hmdb51") for k in (1, 2, 3)},
    **{f"k600/zs_split{k}": (f"splits/k600_splits/ZS_split{k}_K600_eval.txt", f"k600/zs_split{k}")
       for k in (1, 2, 3)},
    "ssv2/validation": ("splits/ssv2_splits/validation.txt", "ssv2"),
}
for _name, _folder in _B2N_DATASETS.items():
    _splits = ["base_val", "novel_val"] + [f"fs_base_s{k}_train" for k in (1, 2, 3)]
    if _name != "k400":  # not published: the K400 base-train list is the full K400 train subset
        _splits.append("base_train")
    for _split in _splits:
        _half = "novel" if _split.startswith("novel") else "base"
        SPLIT_FILES[f"base2novel/{_name}/{_split}"] = (
            f"splits/base2novel_splits/{_folder}_splits/{_split}.txt", f"{_name}/{_half}")


def _resource(relative: str) -> Path:
    path = Path(str(resources.files("vita_clip").joinpath("resources", relative)))
    if not path.is_file():
        raise FileNotFoundError(f"packaged resource {relative!r} is missing from {path.parent}: "
                                "reinstall vita-clip (the package data was not installed)")
    return path


def _lookup(table: dict, name: str, kind: str):
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def label_file(name: str) -> Path:
    """Path of a shipped class-name file, e.g. ``label_file("k400")``."""
    return _resource(_lookup(LABEL_FILES, name, "class list"))


def class_names(name: str) -> list[str]:
    """The class names of a shipped class list, in label order."""
    return read_class_names(label_file(name))


def split_file(name: str) -> Path:
    """Path of a shipped split (``path label`` lines), e.g. ``split_file("ucf101/val1")``."""
    return _resource(_lookup(SPLIT_FILES, name, "split")[0])


def split_classes(name: str) -> str:
    """Name of the class list that a split's labels index, e.g. ``"k600/zs_split2"``."""
    return _lookup(SPLIT_FILES, name, "split")[1]


def available() -> dict[str, list[str]]:
    """All shipped names: ``{"class_lists": [...], "splits": [...]}``."""
    return {"class_lists": sorted(LABEL_FILES), "splits": sorted(SPLIT_FILES)}


def resolve_classes(spec: str | None, fallback: list[str] | None = None) -> list[str]:
    """A class list from a file or a shipped label-file name (``k400``, ``ucf101``, ...)."""
    if spec is None:
        if fallback is None:
            raise ValueError("data.classes: give a class file or a shipped class list name "
                             f"({', '.join(sorted(LABEL_FILES))})")
        return fallback
    if spec in LABEL_FILES:
        return class_names(spec)
    if not Path(spec).is_file():
        raise FileNotFoundError(f"data.classes: {spec!r} is neither a file nor a shipped class list "
                                f"({', '.join(sorted(LABEL_FILES))})")
    return read_class_names(spec)


# -- evaluation protocols ------------------------------------------------------------------------


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


# -- where the videos of a list are: the layouts of users' copies ------------------------------------

LAYOUTS = ("flat", "class-folder")
LAYOUT_HELP = """\
The videos a list names are looked for under data_root in two layouts (detected per list):
  flat          data_root/<path in the list>                    e.g. ucf101/v_ApplyEyeMakeup_g01_c01.avi
  class-folder  data_root/<list folder>/<class folder>/<file>   e.g. ucf101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi,
                (the official UCF-101 / HMDB51 / Kinetics trees)     hmdb51/brush_hair/<file>.avi, k400/val/abseiling/<id>.mp4
A class folder matches its class name ignoring case, spaces, underscores and punctuation."""


def _folder_key(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


@dataclass
class LocatedVideos:
    """The entries of a list with paths under ``data_root`` in the detected ``layout``, and
    those whose file is in neither layout (``missing``, as skip records)."""

    layout: str
    entries: list
    missing: list


class _ClassFolders:
    """Class label -> the sub-folder holding its videos, per list folder (listed once)."""

    def __init__(self, data_root: str, classes: list[str] | None):
        self.root, self.classes, self.cache = data_root, classes, {}

    def path(self, relative: str, label: int) -> str:
        folder, name = os.path.split(relative)
        if folder not in self.cache:
            base = os.path.join(self.root, folder)
            try:
                subdirs = [e.name for e in os.scandir(base) if e.is_dir()]
            except OSError:
                subdirs = []
            self.cache[folder] = {_folder_key(d): d for d in subdirs}
        class_name = self.classes[label] if self.classes is not None and label < len(self.classes) else str(label)
        sub = self.cache[folder].get(_folder_key(class_name), class_name.replace(" ", "_"))
        return os.path.join(self.root, folder, sub, name)


def locate_videos(entries: list, data_root: str | os.PathLike, classes: list[str] | None, list_name: str = "the list",
                  sample: int = 32) -> LocatedVideos:
    """Find the videos of ``entries`` (read with an empty ``data_root``, so relative paths are as
    listed) under ``data_root``: the layout (:data:`LAYOUTS`) is detected on an evenly spread
    sample of the list before any decoding; then every file is checked (a ``stat`` each).
    Raises ``FileNotFoundError`` naming an example path of each layout if the sample is in
    neither."""
    from .errors import SkippedSample  # local: the module stays importable on its own

    data_root = str(data_root)
    folders = _ClassFolders(data_root, classes)
    candidates = {
        "flat": lambda e: os.path.join(data_root, e.path),
        "class-folder": lambda e: e.path if os.path.isabs(e.path) else folders.path(e.path, e.label),
    }
    if not entries:
        return LocatedVideos("flat", [], [])
    step = max(1, len(entries) // sample)
    probe = entries[::step][:sample]
    hits = {layout: sum(os.path.isfile(where(e)) for e in probe) for layout, where in candidates.items()}
    layout = max(LAYOUTS, key=lambda name: hits[name])  # ties: flat
    if hits[layout] == 0:
        first = probe[0]
        raise FileNotFoundError(
            f"{list_name}: none of {len(probe)} sampled videos is under data_root {data_root or '.'!r} in either layout, "
            f"e.g. neither {candidates['flat'](first)} (flat) nor {candidates['class-folder'](first)} (class-folder); "
            "set --data-root to the folder holding the videos")
    other = LAYOUTS[1 - LAYOUTS.index(layout)]
    located, missing = [], []
    for entry in entries:
        path = candidates[layout](entry)
        if not os.path.isfile(path):
            alternative = candidates[other](entry)  # a copy that mixes the layouts
            if not os.path.isfile(alternative):
                missing.append(SkippedSample(index=None, path=path, reason=f"file not found ({entry.list_file}, line {entry.line})"))
                continue
            path = alternative
        located.append(replace(entry, path=path))
    return LocatedVideos(layout, located, missing)
