"""Video lists, class-name files and the shipped protocol files."""
import os

import pytest

from vita_clip.data import VideoDataError, protocols, read_class_names, read_video_list
from vita_clip.data.classes import write_class_csv
from vita_clip.data.lists import write_video_list


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_space_comma_and_mixed_lines(tmp_path):
    lst = write(tmp_path, "l.txt", "a/x.mp4 3\nb/y.mp4,0\n\nmy video.mp4 12\nodd,name.mp4,7\n/abs/z.mp4 1\n")
    parsed = read_video_list(lst, data_root="/data")
    assert [(e.path, e.label, e.line) for e in parsed.entries] == [
        ("/data/a/x.mp4", 3, 1), ("/data/b/y.mp4", 0, 2), ("/data/my video.mp4", 12, 4),
        ("/data/odd,name.mp4", 7, 5), ("/abs/z.mp4", 1, 6)]
    assert parsed.skipped == []
    assert parsed.entries[0].list_file == str(lst)


def test_relative_paths_without_root(tmp_path):
    lst = write(tmp_path, "l.txt", "clip.webm 2\n")
    assert read_video_list(lst).entries[0].path == "clip.webm"


@pytest.mark.parametrize("line, expected", [
    ("just_a_path.mp4", "expected '<path> <label>'"),
    ("clip.mp4 three", "must be an integer, got 'three'"),
    ("clip.mp4 120 4", "looks like 'path num_frames label'"),
    ("clip.mp4 -1", "label -1 of 'clip.mp4' is outside the class list"),
    ("clip.mp4,5", "label 5 of 'clip.mp4' is outside the class list, expected [0, 5)"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, expected):
    lst = write(tmp_path, "l.txt", f"ok.mp4 0\n\n{line}\nok2.mp4 1\n")
    with pytest.raises(VideoDataError) as info:
        read_video_list(lst, num_classes=5)
    assert info.value.path == str(lst) and info.value.line == 3
    assert f"{lst}, line 3" in str(info.value) and expected in str(info.value)


def test_skip_policy_keeps_good_lines_and_records_bad_ones(tmp_path):
    lst = write(tmp_path, "l.txt", "a.mp4 0\nbroken\nb.mp4 9\nc.mp4 1\n")
    parsed = read_video_list(lst, num_classes=3, on_error="skip")
    assert [e.path for e in parsed.entries] == ["a.mp4", "c.mp4"]
    assert [(s.path, s.line) for s in parsed.skipped] == [(str(lst), 2), (str(lst), 3)]
    assert "outside the class list" in parsed.skipped[1].reason
    assert str(parsed.skipped[1]).startswith(f"{lst}, line 3: ")


def test_missing_list_and_bad_policy(tmp_path):
    with pytest.raises(VideoDataError, match="cannot read the video list"):
        read_video_list(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="on_error must be one of"):
        read_video_list(write(tmp_path, "l.txt", "a 0\n"), on_error="ignore")


def test_class_names_from_csv_txt_json(tmp_path):
    csv_file = write(tmp_path, "c.csv", 'id,name\n1,b thing\n0,"a, with comma"\n2,c\n')
    assert read_class_names(csv_file) == ["a, with comma", "b thing", "c"]
    assert read_class_names(write(tmp_path, "c.txt", "ApplyEyeMakeup\nbrush_hair\n\n")) == ["ApplyEyeMakeup", "brush_hair"]
    assert read_class_names(write(tmp_path, "c.json", '["x", "y"]')) == ["x", "y"]


@pytest.mark.parametrize("name, text, expected, line", [
    ("a.csv", "idx,label\n0,a\n", "expected the header 'id,name'", 1),
    ("b.csv", "id,name\n0,a\n0,b\n", "duplicate id 0", 3),
    ("c.csv", "id,name\n0,a\nx,b\n", "the id must be an integer, got 'x'", 3),
    ("d.csv", "id,name\n0,a,extra\n", "expected 2 columns", 2),
    ("e.csv", "id,name\n0,a\n2,c\n", "ids must be 0..1 without gaps; missing [1]", None),
    ("f.txt", "a\n\nb\n", "empty class name", 2),
    ("g.json", "{\"a\": 1}", "expected a JSON list", None),
    ("h.txt", "\n\n", "no class names found", None),
])
def test_bad_class_files(tmp_path, name, text, expected, line):
    path = write(tmp_path, name, text)
    with pytest.raises(VideoDataError) as info:
        read_class_names(path)
    assert expected in str(info.value) and info.value.path == str(path) and info.value.line == line


def test_writers_round_trip(tmp_path):
    write_video_list(tmp_path / "l.txt", [("v/a b.webm", 1), ("v/c.webm", 0)])
    write_class_csv(tmp_path / "c.csv", ["left, fast", "right"])
    assert [(e.path, e.label) for e in read_video_list(tmp_path / "l.txt").entries] == [("v/a b.webm", 1), ("v/c.webm", 0)]
    assert read_class_names(tmp_path / "c.csv") == ["left, fast", "right"]


EXPECTED_CLASS_COUNTS = {
    "k400": 400, "k400/base": 200, "k400/novel": 200, "k600": 600, "k600/zs_split1": 160,
    "ucf101": 101, "ucf101/base": 51, "ucf101/novel": 50, "hmdb51": 51, "hmdb51/base": 26,
    "hmdb51/novel": 25, "ssv2": 174, "ssv2/base": 87, "ssv2/novel": 87, "vita/k400": 400, "vita/hmdb51": 51,
}


def test_shipped_class_lists():
    for name, count in EXPECTED_CLASS_COUNTS.items():
        assert len(protocols.class_names(name)) == count, name
    assert protocols.class_names("ucf101")[:2] == ["ApplyEyeMakeup", "ApplyLipstick"]  # CamelCase kept
    assert protocols.class_names("hmdb51")[0] == "brush hair"
    assert protocols.class_names("vita/hmdb51")[0] == "brush_hair"
    assert protocols.class_names("vita/k400") == protocols.class_names("k400")
    base, novel = set(protocols.class_names("k400/base")), set(protocols.class_names("k400/novel"))
    assert not base & novel and base | novel == set(protocols.class_names("k400"))
    assert os.path.dirname(str(protocols.label_file("k400"))).endswith(os.path.join("vita_clip", "resources", "labels"))


def test_every_shipped_split_parses_against_its_class_list():
    names = protocols.available()["splits"]
    assert len(names) == 3 + 3 + 3 + 1 + 4 * 5 + 3  # zero-shot, ssv2, base-to-novel (no k400 base_train)
    for name in names:
        classes = protocols.class_names(protocols.split_classes(name))
        parsed = read_video_list(protocols.split_file(name), num_classes=len(classes))
        assert len(parsed) > 0 and not parsed.skipped, name
    ucf = read_video_list(protocols.split_file("ucf101/val1"))
    assert (ucf.entries[0].path, ucf.entries[0].label) == ("v_ApplyEyeMakeup_g01_c01.avi", 0)
    few_shot = read_video_list(protocols.split_file("base2novel/hmdb51/fs_base_s1_train"))
    assert len(few_shot) == 16 * 26  # 16 shots per base class


def test_unknown_protocol_names_list_the_known_ones():
    with pytest.raises(KeyError, match="unknown split 'ucf101/val4'.*ucf101/val1"):
        protocols.split_file("ucf101/val4")
    with pytest.raises(KeyError, match="unknown class list 'k700'"):
        protocols.label_file("k700")
