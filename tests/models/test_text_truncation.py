"""Causal truncation of the text tower: the transformer runs on the prefix holding every
end-of-text token, and values and gradients equal the full-length (77 positions) path."""
from __future__ import annotations

import contextlib

import open_clip
import pytest
import torch

from helpers import rel_err
from vita_clip import create_model
from vita_clip.models.text import CONTEXT_LENGTH, TextEncoder, tokenize

# names of very different token counts, so the prefix is set by the longest one
CLASSES = ["yoga", "playing guitar", "brush_hair", "riding a mechanical bull at the county fair", "surfing water"]
EOT = 49407


@contextlib.contextmanager
def seen_lengths(text: TextEncoder):
    """The sequence length every text block is given, one list per forward of the tower."""
    lengths: list[list[int]] = []

    def first(module, args):
        lengths.append([args[0].shape[1]])

    def later(module, args):
        lengths[-1].append(args[0].shape[1])

    blocks = text.transformer.resblocks
    handles = [blocks[0].register_forward_pre_hook(first)]
    handles += [b.register_forward_pre_hook(later) for b in blocks[1:]]
    try:
        yield lengths
    finally:
        for h in handles:
            h.remove()


def eot_prefix(tokens: torch.Tensor) -> int:
    """The reference answer, from the token ids alone: one past the last EOT position."""
    positions = [row.tolist().index(EOT) for row in tokens]
    return max(positions) + 1


def test_prompt_learner_prompts_run_on_the_eot_prefix_only():
    model = create_model("vita-clip-tiny", CLASSES).train()
    tokens = model.prompt_learner.tokenized_prompts
    with seen_lengths(model.text) as lengths:
        model.encode_text()
    layers = len(model.text.transformer.resblocks)
    assert lengths == [[eot_prefix(tokens)] * layers]
    assert eot_prefix(tokens) < CONTEXT_LENGTH


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_prompt_learner_keeps_the_eot_where_the_tokens_say(position):
    """The pooled position (argmax of the ids) must hold the EOT embedding, and the context
    must lie before it, for every class-name position."""
    model = create_model("vita-clip-tiny", CLASSES, text=dict(position=position, class_specific=False))
    learner = model.prompt_learner
    with torch.no_grad():
        prompts = learner(model.text.token_embedding)
    eot = learner.tokenized_prompts.argmax(-1)
    assert eot.tolist() == [row.tolist().index(EOT) for row in learner.tokenized_prompts]
    table = model.text.token_embedding.weight
    assert torch.equal(prompts[torch.arange(len(CLASSES)), eot], table[EOT].expand(len(CLASSES), -1))
    ctx_rows = (prompts.unsqueeze(2) == learner.ctx.detach()[None, None]).all(-1).any(-1)  # (n_cls, 77)
    assert ctx_rows.sum(-1).tolist() == [learner.n_ctx] * len(CLASSES)
    assert (ctx_rows.float().argmax(-1) < eot).all()


def test_zero_shot_templates_run_per_chunk_on_its_own_prefix():
    model = create_model("vita-clip-tiny", CLASSES).eval()
    templates = ["{}", "a video of a person doing {}."]
    with seen_lengths(model.text) as lengths:
        model.text.encode_templates(CLASSES, templates, chunk=2)
    names = [c.replace("_", " ") for c in CLASSES]
    expected = [eot_prefix(tokenize([t.format(n) for n in names[i:i + 2]]))
                for t in templates for i in range(0, len(names), 2)]
    assert [seq[0] for seq in lengths] == expected
    assert len(set(expected)) > 2  # the chunks really differ


def test_deep_text_prompts_run_on_the_eot_prefix_only():
    model = create_model("vifi-clip-tiny-prompting", CLASSES).train()
    with seen_lengths(model.text) as lengths:
        model.encode_text()
    assert lengths == [[eot_prefix(model.prompt_learner.tokenized_prompts)] * 2]


def test_a_given_eot_end_is_checked_against_the_tokens():
    model = create_model("vita-clip-tiny", CLASSES)
    learner = model.prompt_learner
    tokens = learner.tokenized_prompts
    assert learner.eot_end == eot_prefix(tokens)
    prompts = learner(model.text.token_embedding)
    with pytest.raises(ValueError, match="does not hold the tokens' end-of-text tokens"):
        model.text(prompts, tokens, eot_end=learner.eot_end - 1)
    learner.set_classnames(["yoga"] * len(CLASSES))  # new classes: a new prefix
    assert learner.eot_end == eot_prefix(learner.tokenized_prompts) < eot_prefix(tokens)


def test_a_full_graph_compile_truncates_with_the_learner_s_eot_end():
    """In a compiled full graph the prefix cannot be read from the tokens; the learner's host
    int gives it. Both compiled forms equal eager."""
    torch.manual_seed(0)
    model = create_model("vita-clip-tiny", CLASSES).eval()
    learner, text = model.prompt_learner, model.text
    with torch.no_grad():
        prompts = learner(text.token_embedding)
        expected = text(prompts, learner.tokenized_prompts, eot_end=learner.eot_end)
        compiled = torch.compile(text, fullgraph=True, backend="eager")
        cut = compiled(prompts, learner.tokenized_prompts, eot_end=learner.eot_end)
        full = compiled(prompts, learner.tokenized_prompts)
    assert torch.equal(cut, expected)
    assert rel_err(full, expected) <= 1e-6


def text_grads(model, weights: torch.Tensor, truncate: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Text features, the gradients of ``(features * weights).sum()`` and the length the tower saw."""
    model.text.truncate = truncate
    model.zero_grad(set_to_none=True)
    with seen_lengths(model.text) as lengths:
        features = model.encode_text()
    (features * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return features.detach(), grads, lengths[0][0]


GRADIENT_CASES = [
    ("vita-clip-tiny", {}, {"prompt_learner.ctx"}),  # CSC context, name at the end
    ("vita-clip-tiny", dict(text=dict(class_specific=False, position="middle")), {"prompt_learner.ctx"}),
    ("vita-clip-tiny", dict(text=dict(position="front")), {"prompt_learner.ctx"}),
    ("vifi-clip-tiny-prompting", {}, {"prompt_learner.ctx", "text_prompts"}),
    ("vifi-clip-tiny", dict(finetune="both"), None),
    ("vifi-clip-tiny", dict(finetune="text"), None),
]


@pytest.mark.parametrize("name, options, expected_params", GRADIENT_CASES,
                         ids=["vita-csc-end", "vita-generic-middle", "vita-csc-front", "vifi-deep-prompts",
                              "vifi-both", "vifi-text"])
def test_truncated_gradients_equal_full_length_float64(name, options, expected_params):
    torch.manual_seed(0)
    model = create_model(name, CLASSES, **options).double().train()
    weights = torch.randn(len(CLASSES), model.text.output_dim, dtype=torch.float64)
    short, short_grads, short_len = text_grads(model, weights, truncate=True)
    full, full_grads, full_len = text_grads(model, weights, truncate=False)
    assert short_len < full_len == CONTEXT_LENGTH
    if expected_params is None:  # the text tower trains: every text weight but the token embedding
        expected_params = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("text.")}
        assert len(expected_params) > 10
    assert set(short_grads) == set(full_grads) == expected_params
    assert rel_err(short, full) <= 1e-12
    for key in expected_params:
        assert full_grads[key].norm() > 0, key
        assert rel_err(short_grads[key], full_grads[key]) <= 1e-12, key


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_zero_shot_templates_equal_full_length(dtype, tol):
    torch.manual_seed(0)
    model = create_model("vifi-clip-tiny", CLASSES).to(dtype).eval()
    model.set_classes(CLASSES, templates="video")
    with torch.no_grad():
        short = model.text.encode_templates(CLASSES, model.templates)
        model.text.truncate = False
        full = model.text.encode_templates(CLASSES, model.templates)
    assert rel_err(short, full) <= tol


def tiny_clip(**text_cfg) -> open_clip.CLIP:
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=64, head_width=16,
                                                        patch_size=16),
                          text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=4, layers=2, **text_cfg))


def test_a_bidirectional_tower_keeps_the_full_length():
    """open_clip's ``no_causal_mask``: every position attends to the padding after the EOT,
    so cutting it would change the output; the encoder must see all 77 positions and equal
    open_clip's own text encoder."""
    clip = tiny_clip(no_causal_mask=True).double()
    text = TextEncoder(clip)
    assert not text.causal
    tokens = tokenize([f"a photo of {c}." for c in CLASSES])
    assert text.sequence_length(tokens) == CONTEXT_LENGTH
    with torch.no_grad():
        with seen_lengths(text) as lengths:
            ours = text.encode_tokens(tokens)
        assert lengths == [[CONTEXT_LENGTH] * 2]
        reference = clip.encode_text(tokens)
        text.causal = True  # what a truncation would compute: it differs, so the guard matters
        cut = text.encode_tokens(tokens)
    assert rel_err(ours, reference) <= 1e-12
    assert rel_err(cut, reference) > 1e-3


def test_the_causal_tower_is_recognised_and_equals_open_clip():
    clip = tiny_clip().double()
    text = TextEncoder(clip)
    assert text.causal
    tokens = tokenize([f"a photo of {c}." for c in CLASSES])
    with torch.no_grad():
        assert rel_err(text.encode_tokens(tokens), clip.encode_text(tokens)) <= 1e-12


@pytest.mark.parametrize("pool", ["last", "first", "eos"])
def test_a_tower_not_pooled_at_the_eot_is_refused(pool):
    with pytest.raises(ValueError, match=f"pools with '{pool}'"):
        TextEncoder(tiny_clip(pool_type=pool))


def test_a_mask_that_is_not_causal_keeps_the_full_length():
    clip = tiny_clip()
    clip.attn_mask = torch.zeros(CONTEXT_LENGTH, CONTEXT_LENGTH)
    text = TextEncoder(clip)
    assert not text.causal
    assert text.sequence_length(tokenize(["yoga"])) == CONTEXT_LENGTH


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_lengths_are_multiples_of_8_and_equal_full_length():
    torch.manual_seed(0)
    model = create_model("vita-clip-tiny", CLASSES).double().cuda().train()
    weights = torch.randn(len(CLASSES), model.text.output_dim, dtype=torch.float64, device="cuda")
    short, short_grads, short_len = text_grads(model, weights, truncate=True)
    full, full_grads, _ = text_grads(model, weights, truncate=False)
    prefix = eot_prefix(model.prompt_learner.tokenized_prompts.cpu())
    assert short_len % 8 == 0 and prefix <= short_len < prefix + 8
    assert rel_err(short, full) <= 1e-12
    assert rel_err(short_grads["prompt_learner.ctx"], full_grads["prompt_learner.ctx"]) <= 1e-12
