"""Frame sampling against hand-computed indices."""
import numpy as np
import pytest

from vita_clip.data import SamplingConfig, sample_frame_indices
from vita_clip.data.sampling import sample_rngs


class FixedDraw:
    """Stands in for the generator: ``integers`` returns what ``pick(low, high)`` says."""

    def __init__(self, pick):
        self.pick = pick

    def integers(self, low, high=None):
        return self.pick(low, high)


def dense(num_frames=8, stride=16, num_clips=1):
    return SamplingConfig(num_frames=num_frames, mode="dense", stride=stride, num_clips=num_clips)


def segment(num_frames=8, num_clips=1):
    return SamplingConfig(num_frames=num_frames, mode="segment", num_clips=num_clips)


def test_dense_training_clip_starts_where_the_draw_says():
    seen = []
    start_10 = FixedDraw(lambda low, high: seen.append((low, high)) or 10)
    got = sample_frame_indices(300, dense(), train=True, rng=start_10)
    assert got.tolist() == [[10, 26, 42, 58, 74, 90, 106, 122]]
    assert seen == [(0, 300 - 113 + 1)]  # starts 0..187: the window of 113 frames always fits


def test_dense_training_short_video_repeats_the_last_frame():
    got = sample_frame_indices(50, dense(), train=True, rng=FixedDraw(lambda low, high: low))
    assert got.tolist() == [[0, 16, 32, 48, 49, 49, 49, 49]]


def test_dense_training_random_starts_stay_in_range():
    starts = []
    for index in range(200):
        clip = sample_frame_indices(300, dense(), True, sample_rngs(0, 0, index)[0])[0]
        assert (np.diff(clip) == 16).all()
        starts.append(clip[0])
    assert min(starts) >= 0 and max(starts) <= 187
    assert len(set(starts)) > 100  # spread over the range, not stuck


def test_dense_test_views_are_evenly_spaced():
    three = sample_frame_indices(300, dense(num_clips=3), train=False)
    assert three.tolist() == [list(range(0, 113, 16)), list(range(94, 207, 16)), list(range(187, 300, 16))]
    one = sample_frame_indices(300, dense(num_clips=1), train=False)
    assert one.tolist() == [list(range(93, 206, 16))]  # centred: start 187 // 2
    four = sample_frame_indices(300, dense(num_clips=4), train=False)
    assert four[:, 0].tolist() == [0, 62, 125, 187]  # round(187 * i / 3)


def test_dense_test_short_video_pads_every_view():
    got = sample_frame_indices(50, dense(num_clips=3), train=False)
    assert got.tolist() == [[0, 16, 32, 48, 49, 49, 49, 49]] * 3


def test_segment_test_takes_segment_centres():
    assert sample_frame_indices(300, segment(), train=False).tolist() == [[18, 56, 93, 131, 168, 206, 243, 281]]
    # 5 frames in 8 segments: floor((i + 0.5) * 5 / 8)
    assert sample_frame_indices(5, segment(), train=False).tolist() == [[0, 0, 1, 2, 2, 3, 4, 4]]


def test_segment_test_clips_take_evenly_spaced_offsets():
    got = sample_frame_indices(300, segment(num_clips=2), train=False)
    assert got.tolist() == [[9, 46, 84, 121, 159, 196, 234, 271],    # 1/4 into each 37.5-frame segment
                            [28, 65, 103, 140, 178, 215, 253, 290]]  # 3/4 into each


def test_segment_training_draws_one_frame_per_segment():
    starts = [0, 37, 75, 112, 150, 187, 225, 262]  # 300 * i // 8
    first = sample_frame_indices(300, segment(), True, FixedDraw(lambda low, high: np.zeros_like(high)))
    last = sample_frame_indices(300, segment(), True, FixedDraw(lambda low, high: np.asarray(high) - 1))
    assert first.tolist() == [starts]
    assert last.tolist() == [[s - 1 for s in starts[1:]] + [299]]
    for index in range(50):
        clip = sample_frame_indices(300, segment(), True, sample_rngs(3, 1, index)[0])[0]
        assert all(s <= f < e for s, f, e in zip(starts, clip, starts[1:] + [300]))


def test_segment_training_short_video():
    got = sample_frame_indices(5, segment(), True, FixedDraw(lambda low, high: np.asarray(high) - 1))
    assert got.tolist() == [[0, 0, 1, 1, 2, 3, 3, 4]]  # empty segments fall back to their start


def test_indices_are_a_pure_function_of_seed_epoch_index():
    def clip(seed, epoch, index):
        return sample_frame_indices(300, dense(), True, sample_rngs(seed, epoch, index)[0]).tolist()

    assert clip(0, 2, 5) == clip(0, 2, 5)
    assert [clip(0, 0, i) for i in range(20)] != [clip(0, 1, i) for i in range(20)]
    assert [clip(0, 0, i) for i in range(20)] != [clip(1, 0, i) for i in range(20)]
    frames_rng, augment_rng = sample_rngs(0, 2, 5)
    assert frames_rng.integers(1 << 30) != augment_rng.integers(1 << 30)  # separate streams


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="sampling mode must be one of"):
        SamplingConfig(mode="uniform")
    with pytest.raises(ValueError, match="stride must be >= 1"):
        SamplingConfig(stride=0)
    with pytest.raises(ValueError, match="length 0"):
        sample_frame_indices(0, dense(), train=False)
    with pytest.raises(ValueError, match="needs a random generator"):
        sample_frame_indices(10, dense(), train=True)
