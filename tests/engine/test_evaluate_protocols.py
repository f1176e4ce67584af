"""The protocol arithmetic on hand-computed cases, evaluation on real (generated) videos with a
model whose answers are known, and eval on a class-folder tree equal to eval on a flat tree."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from helpers import save_tiny_checkpoint, write_sliding_clip
from vita_clip.data.config import DataConfig
from vita_clip.data.dataset import VideoDataset, load_clip
from vita_clip.data.lists import write_video_list
from vita_clip.data.protocols import combine, harmonic_mean
from vita_clip.engine.evaluate import EvalResult, evaluate
from vita_clip.engine.metrics import topk_correct
from vita_clip.eval import main as eval_main
from vita_clip.inference import classify_views


class LogitsInVideo(nn.Module):
    """Returns the first pixel values of each view as its logits."""

    def forward(self, views, text_features):
        return views[:, 0, 0, 0, : text_features.shape[0]]


def test_multi_view_averages_softmax_not_logits():
    views = torch.zeros(2, 2, 1, 3, 1, 2)  # B=2 videos, V=2 views, logits over 2 classes
    views[0, 0, 0, 0, 0] = torch.tensor([0.0, math.log(3)])  # softmax (1/4, 3/4)
    views[0, 1, 0, 0, 0] = torch.tensor([0.0, 0.0])  # softmax (1/2, 1/2)
    views[1, :, 0, 0, 0] = torch.tensor([math.log(4), 0.0])  # both views (4/5, 1/5)
    probs = classify_views(LogitsInVideo(), views, torch.zeros(2, 4))
    assert torch.allclose(probs, torch.tensor([[0.375, 0.625], [0.8, 0.2]]), atol=1e-7)
    # averaging logits instead would give (1, sqrt 3)/(1 + sqrt 3) = 0.366, 0.634 for video 0


def test_topk_counts():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.15, 0.05, 0.0],   # label 2: second -> top-5 only
                           [0.9, 0.02, 0.02, 0.02, 0.02, 0.02],  # label 0: top-1
                           [0.3, 0.25, 0.2, 0.15, 0.1, 0.0]])   # label 5: last -> neither
    assert topk_correct(scores, torch.tensor([2, 0, 5]), ks=(1, 2, 5)) == {1: 1, 2: 2, 5: 2}


def test_mean_class_accuracy_skips_classes_without_videos():
    assert EvalResult(top1=80, top5=100, videos=5, per_class=[100.0, 50.0, None]).mean_class_accuracy == 75.0


def test_mean_std_over_three_splits_and_harmonic_mean():
    rows = [{"top1": 60.0, "top5": 90.0}, {"top1": 70.0, "top5": 95.0}, {"top1": 80.0, "top5": 100.0}]
    summary = combine("zs-ucf101", rows)
    assert summary["top1_mean"] == 70.0 and summary["top5_mean"] == 95.0
    assert summary["top1_std"] == pytest.approx(math.sqrt(200 / 3))  # population std, as numpy's np.std: 8.165
    b2n = combine("b2n-hmdb51", [{"top1": 80.0, "top5": 0.0}, {"top1": 60.0, "top5": 0.0}])
    assert b2n == {"base": 80.0, "novel": 60.0, "hm": pytest.approx(2 * 80 * 60 / 140)}  # 68.571
    assert harmonic_mean(0.0, 0.0) == 0.0


class NearestBrightness(nn.Module):
    """Predicts the class whose reference brightness is nearest to the video's mean pixel."""

    def __init__(self, centres):
        super().__init__()
        self.register_buffer("centres", torch.tensor(centres))
        self.classnames = [f"c{i}" for i in range(len(centres))]

    def class_text_features(self):
        return torch.eye(len(self.classnames))

    def forward(self, views, text_features):
        mean = views.mean(dim=(1, 2, 3, 4))
        return -100 * (mean[:, None] - self.centres[None]) ** 2


def test_evaluate_on_videos_with_known_answers(tmp_path):
    """Class 0 dark, class 1 bright, class 2 no videos: 3/3 + 1/2 right -> top-1 80, mean-cls 75."""
    config = DataConfig.vita_clip(num_frames=4, stride=2, num_clips=2, size=32, backend="cpu")
    levels = {"dark": 40, "bright": 210}
    refs = [load_clip(write_sliding_clip(tmp_path / f"ref_{k}.webm", 0, level=v), config).mean().item()
            for k, v in levels.items()]
    videos = [("d0", 40, 0), ("d1", 40, 0), ("d2", 40, 0), ("b0", 210, 1), ("b1", 40, 1)]
    for name, level, _ in videos:
        write_sliding_clip(tmp_path / f"{name}.webm", 1, level=level)
    (tmp_path / "broken.webm").write_bytes(b"\x00" * 10)
    lst = write_video_list(tmp_path / "val.txt", [(f"{n}.webm", label) for n, _, label in videos] + [("broken.webm", 0)])
    model = NearestBrightness(refs + [1e3])
    result = evaluate(model, VideoDataset(lst, tmp_path, ["a", "b", "c"], train=False, config=config), batch_size=2,
                      device=torch.device("cpu"))
    assert result.videos == 5 and len(result.skipped) == 1 and "broken.webm" in result.skipped[0].path
    assert result.top1 == 80.0 and result.top5 == 100.0
    assert result.per_class == [100.0, 50.0, None] and result.mean_class_accuracy == 75.0
    assert result.confusion == [[3, 0, 0], [1, 1, 0], [0, 0, 0]]


CLASSES = ["brush hair", "Apply Eye Makeup", "cartwheel"]
FOLDERS = ["brush_hair", "ApplyEyeMakeup", "cartwheel"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """The same 9 videos as a flat folder and as an official class-folder tree, one list."""
    root = tmp_path_factory.mktemp("layouts")
    items = [(f"v_{FOLDERS[i % 3]}_g{i:02d}.webm", i % 3) for i in range(9)]
    for k, (name, label) in enumerate(items):
        write_sliding_clip(root / "flat" / name, seed=k)
        write_sliding_clip(root / "tree" / FOLDERS[label] / name, seed=k)
    write_video_list(root / "val.txt", items + [("v_missing.webm", 1)])
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def test_class_folder_tree_and_flat_tree_give_the_same_numbers(trees, tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "model.pt", CLASSES)
    results = {}
    for layout in ("flat", "tree"):
        out = tmp_path / f"{layout}.json"
        assert eval_main(["--checkpoint", str(checkpoint), "--val-list", str(trees / "val.txt"), "--data-root",
                          str(trees / layout), "--workers", "0", "--batch-size", "3", "--per-class",
                          "--output", str(out)]) == 0
        results[layout] = json.loads(out.read_text())
    printed = capsys.readouterr()
    flat, tree = results["flat"]["parts"][0], results["tree"]["parts"][0]
    assert (flat["layout"], tree["layout"]) == ("flat", "class-folder")
    for key in ("top1", "top5", "mean_class_accuracy", "per_class_top1", "confusion", "videos", "skipped"):
        assert flat[key] == tree[key], key
    assert flat["videos"] == 9 and flat["skipped"] == 1 and "v_missing.webm" in flat["skipped_videos"][0]
    assert sum(map(sum, flat["confusion"])) == 9
    assert results["flat"]["views"] == [3, 1]  # Vita-CLIP's recipe: no run config beside this checkpoint
    assert "Apply Eye Makeup" in printed.out and "per-class top-1" in printed.out
    assert (tmp_path / "tree_confusion_val.png").stat().st_size > 0
    per_class = (tmp_path / "tree_per_class.csv").read_text().splitlines()
    assert per_class[0] == "part,class_id,class,videos,top1" and per_class[1].startswith("val,0,brush hair,3,")


def test_eval_with_no_videos_under_the_root_fails_once(trees, tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "model.pt", CLASSES)
    with pytest.raises(SystemExit) as exit_:
        eval_main(["--checkpoint", str(checkpoint), "--val-list", str(trees / "val.txt"), "--data-root",
                   str(tmp_path), "--workers", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "in either layout" in err and "(flat)" in err and "(class-folder)" in err


def test_eval_with_only_unreadable_videos_fails_with_one_message(tmp_path, capsys):
    for i in range(3):
        (tmp_path / "v" / FOLDERS[i]).mkdir(parents=True)
        (tmp_path / "v" / FOLDERS[i] / f"x{i}.webm").write_bytes(b"\x00" * 50)
    write_video_list(tmp_path / "val.txt", [(f"x{i}.webm", i) for i in range(3)])
    checkpoint = save_tiny_checkpoint(tmp_path / "model.pt", CLASSES)
    with pytest.raises(SystemExit) as exit_:
        eval_main(["--checkpoint", str(checkpoint), "--val-list", str(tmp_path / "val.txt"), "--data-root",
                   str(tmp_path / "v"), "--workers", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no video of the evaluation set could be read (3 skipped)" in err
    assert err.count("x1.webm") == 0 and err.count("skipping") == 0  # one message, not one per video
