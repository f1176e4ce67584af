"""The layouts of users' copies: flat (as the lists name the files) and the official class-folder
trees, detected per list; a clear message when neither fits."""
from __future__ import annotations

import pytest

from vita_clip.data.lists import read_video_list
from vita_clip.data.protocols import class_names, locate_videos, split_file

UCF = ["ApplyEyeMakeup", "ApplyLipstick"]
HMDB = ["brush hair", "cartwheel"]  # the shipped HMDB51 names have spaces, the official folders underscores


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def write_list(tmp_path, lines):
    path = tmp_path / "list.txt"
    path.write_text("".join(f"{p} {label}\n" for p, label in lines))
    return read_video_list(path).entries


def test_flat_and_class_folder_layouts_are_detected(tmp_path):
    names = [("v_ApplyEyeMakeup_g01_c01.avi", 0), ("v_ApplyLipstick_g01_c01.avi", 1)]
    entries = write_list(tmp_path, names)
    flat = tmp_path / "flat"
    for name, _ in names:
        touch(flat / name)
    found = locate_videos(entries, flat, UCF)
    assert found.layout == "flat" and [e.path for e in found.entries] == [str(flat / n) for n, _ in names]

    tree = tmp_path / "UCF-101"
    for name, label in names:
        touch(tree / UCF[label] / name)
    found = locate_videos(entries, tree, UCF)
    assert found.layout == "class-folder" and not found.missing
    assert [e.path for e in found.entries] == [str(tree / UCF[label] / n) for n, label in names]
    assert [e.label for e in found.entries] == [0, 1]


def test_hmdb_folders_with_underscores_and_a_list_folder(tmp_path):
    entries = write_list(tmp_path, [("val/a_brush_hair_1.avi", 0), ("val/b_cartwheel_2.avi", 1), ("val/c.avi", 1)])
    root = tmp_path / "hmdb"
    touch(root / "val" / "brush_hair" / "a_brush_hair_1.avi")
    touch(root / "val" / "Cartwheel" / "b_cartwheel_2.avi")
    found = locate_videos(entries, root, HMDB)
    assert found.layout == "class-folder"
    assert [e.path for e in found.entries] == [str(root / "val" / "brush_hair" / "a_brush_hair_1.avi"),
                                               str(root / "val" / "Cartwheel" / "b_cartwheel_2.avi")]
    assert len(found.missing) == 1 and "c.avi" in found.missing[0].path and "line 3" in found.missing[0].reason


def test_neither_layout_names_two_example_paths(tmp_path):
    entries = write_list(tmp_path, [("v_ApplyEyeMakeup_g01_c01.avi", 0)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        locate_videos(entries, tmp_path / "empty", UCF, list_name="val1.txt")
    message = str(err.value)
    assert "val1.txt" in message and "--data-root" in message
    assert str(tmp_path / "empty" / "v_ApplyEyeMakeup_g01_c01.avi") + " (flat)" in message
    assert str(tmp_path / "empty" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi") + " (class-folder)" in message


def test_shipped_ucf_split_on_the_official_tree(tmp_path):
    """The shipped split's flat names resolve in the official UCF-101 tree (incl. the
    HandstandPushups folder whose files say HandStandPushups)."""
    entries = read_video_list(split_file("ucf101/val1")).entries
    classes = class_names("ucf101")
    root = tmp_path / "UCF-101"
    wanted = entries[::200]
    for e in wanted:
        touch(root / classes[e.label] / e.path)  # the official folders are the class names
    found = locate_videos(wanted, root, classes)
    assert found.layout == "class-folder" and not found.missing and len(found.entries) == len(wanted)
