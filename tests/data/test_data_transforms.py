"""Clip transforms: geometry, normalisation, view layout, and consistency across frames."""
import numpy as np
import pytest
import torch

from vita_clip.data import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, TransformConfig
from vita_clip.data import transforms as T


def unnormalize(x, config):
    mean = torch.tensor(config.mean)[:, None, None]
    std = torch.tensor(config.std)[:, None, None]
    return (x * std + mean) * 255


def column_clip(num_frames=3, height=32, width=48):
    """R = column index, G = frame index * 10, B = row index."""
    clip = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    clip[..., 0] = np.arange(width)[None, None, :]
    clip[..., 1] = (np.arange(num_frames) * 10)[:, None, None]
    clip[..., 2] = np.arange(height)[None, :, None]
    return torch.from_numpy(clip)


def test_normalisation_values():
    frame = torch.tensor([255, 0, 128], dtype=torch.uint8).expand(2, 32, 32, 3).contiguous()
    for mean, std in [(CLIP_MEAN, CLIP_STD), (IMAGENET_MEAN, IMAGENET_STD)]:
        config = TransformConfig(size=32, mean=mean, std=std)
        out = T.transform_clip(frame, 1, config, train=False)
        expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(mean)) / torch.tensor(std)
        assert out.shape == (1, 2, 3, 32, 32) and out.dtype == torch.float32
        assert torch.allclose(out[0, :, :, 5, 7], expected.expand(2, 3), atol=1e-6)


def test_centre_and_three_crops_without_resize():
    clip = column_clip()  # 32 x 48: the short side is already the crop size, no resizing
    config = TransformConfig(size=32, num_crops=1)
    centre = unnormalize(T.transform_clip(clip, 1, config, train=False), config).round()
    assert centre.shape == (1, 3, 3, 32, 32)
    assert centre[0, 0, 0, 0].tolist() == list(range(8, 40))  # columns (48 - 32) // 2 onwards
    three = unnormalize(T.transform_clip(clip, 1, TransformConfig(size=32, num_crops=3), train=False), config).round()
    assert [three[c, 0, 0, 0, 0].item() for c in range(3)] == [0, 8, 16]
    assert three[2, 1, 2, :, 0].tolist() == list(range(32)) and three[2, 1, 1, 0, 0] == 10


def test_three_crops_along_the_long_side_of_portrait_frames():
    clip = column_clip(height=48, width=32)
    config = TransformConfig(size=32, num_crops=3)
    three = unnormalize(T.transform_clip(clip, 1, config, train=False), config).round()
    assert [three[c, 0, 2, 0, 0].item() for c in range(3)] == [0, 8, 16]  # rows


def test_test_resize_keeps_aspect_and_floors_the_long_side():
    clip = torch.zeros(2, 48, 70, 3, dtype=torch.uint8)
    x = T.resize_short_side(T._to_float(clip), 32)
    assert x.shape == (2, 3, 32, 70 * 32 // 48)
    out = T.transform_clip(clip, 1, TransformConfig(size=24, test_short_side=32, num_crops=3), train=False)
    assert out.shape == (3, 2, 3, 24, 24)


def test_views_are_temporal_view_major():
    clip = column_clip(num_frames=4)  # two temporal views of two frames each
    config = TransformConfig(size=32, num_crops=3)
    out = unnormalize(T.transform_clip(clip, 2, config, train=False), config).round()
    assert out.shape == (6, 2, 3, 32, 32)
    for view in range(6):
        temporal, crop = divmod(view, 3)
        assert out[view, :, 1, 0, 0].tolist() == [20 * temporal, 20 * temporal + 10]  # its frames
        assert out[view, 0, 0, 0, 0].item() == 8 * crop  # its crop


def all_ops(**overrides):
    settings = dict(size=24, flip=0.5, rand_augment_ops=6, rand_augment_magnitude=9, color_jitter=1.0, grayscale=0.3)
    return TransformConfig(**{**settings, **overrides})


@pytest.mark.parametrize("train_crop", ["random_resized", "multi_scale"])
def test_identical_frames_stay_identical_under_every_augmentation(train_crop):
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(40, 56, 3), dtype=np.uint8))
    clip = image.expand(5, 40, 56, 3).contiguous()
    config = all_ops(train_crop=train_crop, train_short_side=40)
    outputs = []
    for seed in range(25):
        out = T.transform_clip(clip, 1, config, train=True, rng=np.random.default_rng(seed))[0]
        assert out.shape == (5, 3, 24, 24)
        assert (out == out[:1]).all(), f"frames differ for seed {seed}"
        outputs.append(out[0])
    assert len({tuple(o.flatten()[:50].tolist()) for o in outputs}) > 20  # the augmentations do vary


def test_every_frame_gets_the_same_crop():
    base = np.random.default_rng(1).integers(0, 150, size=(40, 56, 3))
    clip = torch.from_numpy(np.stack([base + 10 * t for t in range(4)]).astype(np.uint8))
    config = TransformConfig(size=24, rand_augment_ops=0)
    for seed in range(10):
        out = unnormalize(T.transform_clip(clip, 1, config, True, np.random.default_rng(seed))[0], config)
        for t in range(4):  # resizing is linear: frame t is frame 0 plus 10 t everywhere
            assert torch.allclose(out[t], out[0] + 10 * t, atol=1e-3)


def test_flip_mirrors_the_same_crop():
    clip = column_clip()
    plain = TransformConfig(size=24, rand_augment_ops=0)
    flipped = TransformConfig(size=24, rand_augment_ops=0, flip=1.0)
    a = T.transform_clip(clip, 1, plain, True, np.random.default_rng(4))
    b = T.transform_clip(clip, 1, flipped, True, np.random.default_rng(4))
    assert torch.equal(a.flip(-1), b)


def test_random_resized_box_respects_scale_ratio_and_bounds():
    for seed in range(300):
        top, left, h, w = T.random_resized_box(60, 80, (0.08, 1.0), (3 / 4, 4 / 3), np.random.default_rng(seed))
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.07 <= h * w / 4800 <= 1.0 and 0.7 <= w / h <= 1.45
    # impossible scale: falls back to the largest centred crop of an allowed aspect ratio
    assert T.random_resized_box(60, 120, (2.0, 3.0), (3 / 4, 4 / 3), np.random.default_rng(0)) == (0, 20, 60, 80)


def test_multi_scale_box_sizes_and_positions():
    seen = set()
    for seed in range(400):
        top, left, h, w = T.multi_scale_box(256, 340, 256, (1.0, 0.875, 0.75, 0.66), np.random.default_rng(seed))
        sides = [256, 224, 192, 168]
        assert h in sides and w in sides and abs(sides.index(h) - sides.index(w)) <= 1
        assert top in (0, (256 - h) // 2, 256 - h) or abs(top - (256 - h) / 2) <= 1
        assert top + h <= 256 and left + w <= 340
        seen.add((top == 0, left == 0))
    assert seen == {(True, True), (True, False), (False, True), (False, False)}
    # a 512-pixel short side is first (virtually) resized to 256: boxes scale by 2
    top, left, h, w = T.multi_scale_box(512, 680, 256, (1.0,), np.random.default_rng(0))
    assert (h, w) == (512, 512)


def test_colour_ops():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0.2, 0.7, size=(3, 3, 8, 8)).astype(np.float32))
    stretched = T.autocontrast(x)
    assert torch.allclose(stretched.amin(dim=(0, 2, 3)), torch.zeros(3))
    assert torch.allclose(stretched.amax(dim=(0, 2, 3)), torch.ones(3))
    assert torch.allclose(T.invert(x), 1 - x)
    poster = T.posterize(x, 4) * 255
    assert torch.allclose(poster, (poster / 16).round() * 16) and (poster <= (x * 255).round()).all()
    assert torch.equal(T.solarize(x, 0.5), torch.where(x >= 0.5, 1 - x, x))
    assert torch.equal(T.brightness(x, 0.0), torch.zeros_like(x))
    grey = T.saturation(x, 0.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    flat = T.contrast(x, 0.0)
    assert torch.allclose(flat, flat.flatten()[0].expand_as(flat))
    narrow = torch.from_numpy(rng.integers(51, 103, size=(2, 3, 32, 32)) / 255).float()  # levels 51..102
    equalized = (T.equalize(narrow) * 255).round()
    assert equalized.min() == 0 and equalized.max() >= 240  # spread over the whole range
    for c in range(3):  # one monotone table per channel for the whole clip
        order = narrow[:, c].flatten().argsort()
        assert (equalized[:, c].flatten()[order].diff() >= 0).all()
    assert torch.equal(T.sharpness(x, 1.0), x)


def test_vifi_preset():
    config = TransformConfig.vifi_clip()
    assert (config.mean, config.std, config.train_crop, config.flip) == (IMAGENET_MEAN, IMAGENET_STD, "multi_scale", 0.5)
    assert (config.train_short_side, config.test_short_side, config.rand_augment_ops) == (256, 256, 0)
    assert TransformConfig.vifi_clip(num_crops=3).test_short_side == 224


def test_bad_inputs():
    with pytest.raises(ValueError, match="expected uint8 frames"):
        T.transform_clip(torch.zeros(2, 8, 8, 3), 1, TransformConfig(size=8), train=False)
    with pytest.raises(ValueError, match="num_crops must be 1 or 3"):
        TransformConfig(num_crops=2)
    with pytest.raises(ValueError, match="test_short_side"):
        TransformConfig(size=224, test_short_side=200)
    with pytest.raises(ValueError, match="train_crop"):
        TransformConfig(train_crop="center")
