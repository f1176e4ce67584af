"""ViFiCLIP ``fused=True``: the same function and gradients as the eager blocks, for every
split of the vision-prompt layers into fused ones (prompt outputs discarded: the prompts are
shared keys/values) and eager ones (prompt outputs carried on)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import rel_err
from vita_clip import create_model

CLASSES = ["abseiling", "playing guitar", "brush_hair", "riding a bike", "yoga"]


def pair(depth: int, fp16_prompts: bool):
    torch.manual_seed(depth)
    kwargs = dict(vision_prompts=3, vision_prompt_depth=depth, text_prompts=4, text_prompt_depth=2,
                  fp16_prompts=fp16_prompts)
    eager = create_model("vifi-clip-tiny-prompting", CLASSES, **kwargs)
    fused = create_model("vifi-clip-tiny-prompting", CLASSES, fused=True, **kwargs)
    fused.load_state_dict(eager.state_dict())
    with torch.no_grad():
        for model in (eager, fused):  # prompts of a trained model's size, not N(0, 0.02)
            model.vision_prompts.copy_(torch.randn(eager.vision_prompts.shape, generator=torch.Generator().manual_seed(5)))
    return eager, fused


FLOOR = 4 * torch.finfo(torch.float32).eps  # where the eager error itself is at rounding level


# ViT-Tiny-16 has 3 layers: depth 1 fuses none, 2 fuses layer 0, 3 fuses all three
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("frames", [3, 8])
def test_fused_equals_eager_with_gradients(depth, frames):
    """Logits and vision-prompt gradients of the fused and the eager float32 model against the
    eager model in float64: the fused error at most twice the eager one."""
    eager, fused = pair(depth, fp16_prompts=depth == 2)
    reference = copy.deepcopy(eager).double()
    video = torch.randn(2, frames, 3, 32, 32, generator=torch.Generator().manual_seed(frames))
    labels = torch.tensor([1, 4])
    results = []
    for model, clip in ((eager, video), (fused, video), (reference, video.double())):
        model.train()
        out = model(clip)
        F.cross_entropy(out, labels).backward()
        results.append((out.detach(), model.vision_prompts.grad.clone()))
    (eager_logits, eager_grad), (fused_logits, fused_grad), (ref_logits, ref_grad) = results
    assert rel_err(fused_logits, ref_logits) <= max(2 * rel_err(eager_logits, ref_logits), FLOOR)
    assert rel_err(fused_grad, ref_grad) <= max(2 * rel_err(eager_grad, ref_grad), FLOOR)
    assert rel_err(eager_grad, ref_grad) <= 1e-5 and torch.isfinite(fused_grad).all()
    if depth == 2:  # the layer-1 prompts are carried into layer 2: they must still matter
        assert fused_grad[1].abs().sum() > 0
        # fp16_prompts rounds the forward only: the gradient is not rounded to float16
        assert not torch.equal(fused_grad.half().to(fused_grad.dtype), fused_grad)
