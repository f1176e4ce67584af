"""The CLIP text tower, fed with prompt embeddings, and the CLIP tokenizer."""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

CONTEXT_LENGTH = 77


@lru_cache(maxsize=1)
def _tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    return open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT_LENGTH)


def clean_classname(name: str) -> str:
    """Class names as prompts use them: underscores become spaces (``brush_hair``)."""
    return " ".join(name.replace("_", " ").split())


def count_tokens(text: str) -> int:
    """BPE tokens of ``text`` without the start/end tokens."""
    return len(_tokenizer().encode(text))


def tokenize(texts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """CLIP BPE token ids, ``(len(texts), context_length)`` int64 on the CPU.

    Unlike open_clip's tokenizer, a text that does not fit raises instead of being cut
    (a cut prompt loses its end token and silently changes the class embedding).
    """
    tok = _tokenizer()
    ids = [[tok.sot_token_id, *tok.encode(t), tok.eot_token_id] for t in texts]
    with torch.device("cpu"):  # also when a model is being built under torch.device("meta")
        out = torch.zeros(len(ids), context_length, dtype=torch.long)
        for row, (text, seq) in enumerate(zip(texts, ids)):
            if len(seq) > context_length:
                raise ValueError(f"prompt {text!r} is {len(seq)} tokens long; the text tower takes at most {context_length}")
            out[row, : len(seq)] = torch.tensor(seq)
    return out


class BatchFirstSelfAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose batch-first self-attention projects the contiguous
    ``(N, L, D)`` input (same parameters, same result up to GEMM rounding).

    The parent transposes a batch-first input to ``(L, N, D)`` and projects that strided view;
    when the input records a gradient (training prompts), torch's matmul does not fold it into
    one GEMM but runs a batched GEMM over ``L`` copies of the ``(3D, D)`` weight, copied again in
    the backward (B/16 text side, 400 classes, forward + backward on a CPU: 0.85x the time in
    bf16 with this class, 0.98x in fp32; benchmarks/test_text_throughput.py). The SDPA call that follows is
    the parent's. :class:`TextEncoder` gives its blocks' attention this class; any other call
    (cross-attention, attention weights, padding masks, dropout, bool masks) is the parent's.
    """

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        plain = (query is key and key is value and query.dim() == 3 and self.batch_first and not need_weights
                 and key_padding_mask is None and not is_causal and self._qkv_same_embed_dim
                 and self.in_proj_bias is not None and self.bias_k is None and not self.add_zero_attn
                 and (self.dropout == 0 or not self.training)
                 and (attn_mask is None or (attn_mask.is_floating_point() and attn_mask.dim() == 2)))
        if not plain:
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        n, length, width = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (N, H, L, hd)
        out = F.linear(out.transpose(1, 2).reshape(n, length, width), self.out_proj.weight, self.out_proj.bias)
        return out, None


class TextEncoder(nn.Module):
    """The CLIP text transformer applied to prompt embeddings.

    Holds open_clip's text modules under their open_clip names, so CLIP state dicts map onto
    ``text.<name>``. ``deep_prompts`` (ViFi-CLIP's language prompts) replace token positions
    ``1..n`` before blocks ``1..len(deep_prompts)``.

    Causal truncation: the CLIP text tower is causal and its output is read at the
    end-of-text token, so the positions after the last EOT of a batch can change nothing that
    is read. The transformer runs on the shortest prefix holding every sequence's EOT (see
    :meth:`sequence_length`), with the positional embedding and the causal mask cut to match:
    the same function (values and gradients) at a fraction of the cost (about a quarter for
    400 Kinetics class prompts). ``truncate = False`` runs the full context length, the
    reference path. A tower without a causal mask keeps the full length.
    """

    # Sequence lengths rounded up to this multiple on CUDA, where attention and GEMM kernels
    # work in tiles of 8; on other devices the extra positions would only cost time.
    cuda_length_multiple = 8

    def __init__(self, clip: open_clip.CLIP):
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        for block in self.transformer.resblocks:
            if type(getattr(block, "attn", None)) is nn.MultiheadAttention:
                block.attn.__class__ = BatchFirstSelfAttention  # same module and parameters, see the class
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        pool = getattr(clip, "text_pool_type", "argmax")
        if pool != "argmax":
            raise ValueError(f"the text tower pools with {pool!r}; TextEncoder reads the end-of-text token "
                             "(open_clip pool_type 'argmax', as CLIP's tokenizer gives EOT the largest id)")
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.width = clip.token_embedding.embedding_dim
        self.context_length = clip.positional_embedding.shape[0]
        # Only a causal tower may be cut after the EOT: without the mask (open_clip's
        # no_causal_mask, e.g. SigLIP/MobileCLIP text towers) every position attends to the
        # padding after the EOT, so the padding changes the pooled output.
        self.causal = _is_causal_mask(clip.attn_mask, self.context_length)
        self.truncate = True

    @property
    def output_dim(self) -> int:
        proj = self.text_projection
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens.to(self.token_embedding.weight.device))

    def sequence_length(self, tokens: torch.Tensor, deep_prompts: torch.Tensor | None = None,
                        eot_end: int | None = None) -> int:
        """How many leading positions of ``tokens`` (N, L) the transformer runs: all ``L``
        unless truncation applies, else the shortest prefix that holds every sequence's
        end-of-text token and the deep prompts, rounded up to ``cuda_length_multiple`` on CUDA.

        ``eot_end`` (one past the last EOT position, see :func:`eot_end_of`) may be given by a
        caller that knows it on the host (the prompt learner): it is checked against the tokens
        in eager mode, and lets a compiled graph truncate too (a length read from the tokens
        is a data-dependent shape, which a full graph cannot hold: there it runs full length).
        """
        full = tokens.shape[-1]
        if not (self.truncate and self.causal) or tokens.is_meta or tokens.numel() == 0:
            return full
        if torch.compiler.is_compiling():
            if eot_end is None:
                return full
            length = eot_end
        else:
            length = eot_end_of(tokens)
            if eot_end is not None:
                if not length <= eot_end <= full:
                    raise ValueError(f"eot_end={eot_end} does not hold the tokens' end-of-text tokens "
                                     f"(the last is at position {length - 1} of {full})")
                length = eot_end
        if deep_prompts is not None:
            length = max(length, 1 + deep_prompts.shape[1])
        if self.token_embedding.weight.device.type == "cuda":
            length = -(-length // self.cuda_length_multiple) * self.cuda_length_multiple
        return min(length, full)

    def forward(self, prompts: torch.Tensor, tokens: torch.Tensor, deep_prompts: torch.Tensor | None = None,
                eot_end: int | None = None) -> torch.Tensor:
        """``prompts`` (N, 77, W) embeddings, ``tokens`` (N, 77) ids (for the EOT position) -> (N, E).
        ``eot_end``: see :meth:`sequence_length`."""
        length = self.sequence_length(tokens, deep_prompts, eot_end)
        x = prompts[:, :length] + self.positional_embedding[:length].to(prompts.dtype)
        mask = self.attn_mask
        if mask is not None and length < mask.shape[0]:
            mask = mask[:length, :length].contiguous()
        for i, block in enumerate(self.transformer.resblocks):
            if deep_prompts is not None and 1 <= i <= deep_prompts.shape[0]:
                n = deep_prompts.shape[1]
                x = torch.cat([x[:, :1], deep_prompts[i - 1].to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1 + n :]], dim=1)
            x = block(x, attn_mask=mask)
        x = self.ln_final(x)
        eot = tokens.to(x.device).argmax(dim=-1)  # EOT has the largest id in the vocabulary
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self(self.embed_tokens(tokens), tokens)

    def encode_templates(self, classnames: Sequence[str], templates: Sequence[str], chunk: int = 256) -> torch.Tensor:
        """Zero-shot class embeddings (n_cls, E): the mean of the L2-normalised embeddings of
        every template filled with each (cleaned) class name, as in CLIP's prompt ensembling."""
        names = [clean_classname(c) for c in classnames]
        total = None
        for template in templates:
            tokens = tokenize([template.format(n) for n in names])
            feats = torch.cat([self.encode_tokens(part) for part in tokens.split(chunk)])
            feats = F.normalize(feats, dim=-1)
            total = feats if total is None else total + feats
        return total / len(templates)


def eot_end_of(tokens: torch.Tensor) -> int:
    """One past the last end-of-text position of ``tokens`` (N, L): EOT has the largest id of
    CLIP's vocabulary, so each row's argmax finds it (a host sync when ``tokens`` is on a GPU)."""
    return int(tokens.argmax(dim=-1).max()) + 1


def _is_causal_mask(mask: torch.Tensor | None, length: int) -> bool:
    """Whether ``mask`` is open_clip's additive causal mask (-inf above the diagonal)."""
    if mask is None or tuple(mask.shape) != (length, length):
        return False
    if mask.is_meta:  # no values to check: open_clip builds either the causal mask or none
        return True
    expected = torch.full((length, length), float("-inf"), dtype=mask.dtype, device=mask.device).triu_(1)
    return torch.equal(mask, expected)
