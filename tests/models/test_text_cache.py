"""Text features computed once while the text side is frozen (ViFi-CLIP "image" fine-tuning,
zero-shot evaluation), recomputed when the classes, templates or text weights change."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from vita_clip import create_model
from vita_clip.engine.step import train_step

CLASSES = ["abseiling", "playing guitar", "brush_hair", "riding a bike", "yoga"]


class TextRuns:
    """Counts the forwards of the text transformer (its first block)."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.text.transformer.resblocks[0].register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1


def micro_batches(seed: int, n: int = 4, micro: int = 2):
    g = torch.Generator().manual_seed(seed)
    video, labels = torch.randn(n, 3, 3, 32, 32, generator=g), torch.randint(0, len(CLASSES), (n,), generator=g)
    return [(video[i:i + micro], labels[i:i + micro]) for i in range(0, n, micro)]


def image_finetuning_model():
    torch.manual_seed(0)
    return create_model("vifi-clip-tiny", CLASSES, finetune="image").train()


def test_image_finetuning_runs_the_text_tower_once_and_equals_recomputation():
    model = image_finetuning_model()
    reference = copy.deepcopy(model)
    runs = TextRuns(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ref_optimizer = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1e-3)
    for step in range(3):
        batches = micro_batches(step)
        train_step(model, batches, optimizer)
        # the original's schedule: the text tower in every micro-batch, no cache involved
        ref_optimizer.zero_grad()
        for video, labels in batches:
            text = reference.text.encode_templates(reference.classnames, reference.config.templates)
            loss = F.cross_entropy(reference(video, text_features=text), labels, reduction="sum") / 4
            loss.backward()
        ref_optimizer.step()
    assert runs.count == 1  # the first step only
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
    assert any(not torch.equal(p, q) for p, q in zip(image_finetuning_model().visual.parameters(),
                                                     model.visual.parameters()))  # it did train


def test_the_cache_follows_classes_templates_and_text_weights():
    model = image_finetuning_model()
    runs = TextRuns(model)
    first = model.encode_text()
    assert not first.requires_grad
    assert model.encode_text() is first and runs.count == 1

    model.set_classes(["surfing", "juggling"])
    assert model.encode_text().shape[0] == 2 and runs.count == 2

    model.set_classes(CLASSES, templates="video")
    video_feats = model.encode_text()
    assert runs.count == 3 + 8 - 1  # one pass per template
    model.set_classes(CLASSES)
    torch.testing.assert_close(model.encode_text(), first, rtol=0, atol=0)
    assert not torch.equal(video_feats, first)

    count = runs.count
    with torch.no_grad():
        model.text.transformer.resblocks[0].mlp.c_fc.weight.mul_(2.0)  # e.g. a loaded state dict
    changed = model.encode_text()
    assert runs.count == count + 1
    torch.testing.assert_close(changed, model._compute_text_features(), rtol=0, atol=0)
    assert not torch.allclose(changed, first)

    model.text.requires_grad_(True)  # the text side trains again: features with grad, every call
    count = runs.count
    assert model.encode_text().requires_grad and model.encode_text().requires_grad
    assert runs.count == count + 2


def test_features_cached_under_inference_mode_are_remade_outside_it():
    """An inference tensor cannot be saved for backward: encode_text must not hand one out
    to autograd code after an evaluation under inference_mode."""
    model = image_finetuning_model().eval()
    with torch.inference_mode():
        model(micro_batches(0)[0][0])
    assert model._text_cache[1].is_inference()
    model.train()
    features = model.encode_text()
    assert not features.is_inference()
    video_features = torch.randn(2, features.shape[1], requires_grad=True)
    (video_features @ features.t()).sum().backward()
    assert video_features.grad is not None
    with torch.inference_mode():  # a normal tensor serves inference too: no recomputation
        assert model.class_text_features() is features


def test_a_trained_text_side_is_recomputed_every_step():
    torch.manual_seed(0)
    model = create_model("vita-clip-tiny", CLASSES).train()
    runs = TextRuns(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        train_step(model, micro_batches(step), optimizer)
    assert runs.count == 2
    assert model.prompt_learner.ctx.grad is not None
