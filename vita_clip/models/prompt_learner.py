"""CoOp-style learnable text context around class names (the Vita-CLIP text side)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .text import clean_classname, count_tokens, eot_end_of, tokenize


class PromptLearner(nn.Module):
    """Builds ``[SOS, ctx_1..ctx_n, name, ".", EOS, pad]`` prompt embeddings for every class.

    ``ctx`` is ``(n_cls, n_ctx, W)`` when class-specific, else ``(n_ctx, W)``. The embeddings
    of the fixed tokens (start, class name, ".", end) are looked up in the frozen token
    embedding at every call rather than stored, so they always match the loaded weights and
    the current class names, and checkpoints hold only ``ctx``.

    ``position`` puts the class name at the ``end`` (after the context), in the ``middle``
    (between the two halves of the context) or at the ``front``.

    ``partial_init`` (ViFi-CLIP) keeps ``n_ctx`` with a ``ctx_init``: the context starts as the
    first ``n_ctx`` tokens of those words and the words after them stay in every prompt as
    fixed tokens; without it the context covers all of the words' tokens.
    """

    def __init__(
        self,
        classnames: Sequence[str],
        token_embedding: nn.Embedding,
        n_ctx: int = 8,
        ctx_init: str = "",
        class_specific: bool = True,
        position: str = "end",
        partial_init: bool = False,
    ):
        super().__init__()
        width = token_embedding.embedding_dim
        ctx_init = clean_classname(ctx_init)
        if ctx_init:
            # Initialised from words: one generic context, as many vectors as the words have tokens
            # (or the first n_ctx of them with partial_init).
            words = count_tokens(ctx_init)
            if not partial_init:
                n_ctx = words
            elif not 1 <= n_ctx <= words:
                raise ValueError(f"ctx_init {ctx_init!r} has {words} tokens; n_ctx={n_ctx} must be between 1 and that "
                                 "(more would overwrite the class name with context vectors)")
            tokens = tokenize([ctx_init])
            with torch.no_grad():
                ctx = token_embedding(tokens.to(token_embedding.weight.device))[0, 1 : 1 + n_ctx].clone()
            class_specific = False
            self.prompt_prefix = ctx_init
        else:
            shape = (len(classnames), n_ctx, width) if class_specific else (n_ctx, width)
            ctx = torch.empty(shape, device=token_embedding.weight.device, dtype=token_embedding.weight.dtype)
            nn.init.normal_(ctx, std=0.02)
            self.prompt_prefix = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(ctx)
        self.n_ctx = n_ctx
        self.class_specific = class_specific
        self.position = position
        self.set_classnames(classnames)

    @property
    def classnames(self) -> list[str]:
        return list(self._classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        classnames = list(classnames)
        if not classnames:
            raise ValueError("the class list is empty")
        if self.class_specific and len(classnames) != self.ctx.shape[0]:
            raise ValueError(
                f"class-specific contexts were learned for {self.ctx.shape[0]} classes, got {len(classnames)} class names"
            )
        names = [clean_classname(c) for c in classnames]
        tokens = tokenize([f"{self.prompt_prefix} {n}." for n in names])
        name_lens = [count_tokens(n) for n in names]
        self._classnames = classnames
        # the text tower's prefix as a host int: a constant that a compiled graph can hold
        self.eot_end = eot_end_of(tokens)
        self.register_buffer("tokenized_prompts", tokens.to(self.ctx.device), persistent=False)
        self.register_buffer("position_index", self._position_index(name_lens).to(self.ctx.device), persistent=False)

    def _position_index(self, name_lens: list[int]) -> torch.Tensor:
        """For each class, where each output position reads from in ``[prefix, ctx, suffix]``.

        ``end`` is the identity; ``middle`` and ``front`` move the class-name tokens (the first
        ``name_len`` suffix tokens) into the context, which keeps the EOS where the tokenizer
        put it.
        """
        n_ctx, length = self.n_ctx, self.tokenized_prompts.shape[1]
        ctx = list(range(1, 1 + n_ctx))
        rows = []
        for name_len in name_lens:
            name = list(range(1 + n_ctx, 1 + n_ctx + name_len))
            rest = list(range(1 + n_ctx + name_len, length))
            if self.position == "end":
                order = [0, *ctx, *name, *rest]
            elif self.position == "middle":
                half = n_ctx // 2
                order = [0, *ctx[:half], *name, *ctx[half:], *rest]
            else:  # front
                order = [0, *name, *ctx, *rest]
            rows.append(order)
        with torch.device("cpu"):
            return torch.tensor(rows, dtype=torch.long)

    def forward(self, token_embedding: nn.Embedding) -> torch.Tensor:
        """Prompt embeddings ``(n_cls, 77, W)`` from the (frozen) ``token_embedding``."""
        with torch.no_grad():
            fixed = token_embedding(self.tokenized_prompts)
        n_cls = fixed.shape[0]
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(n_cls, -1, -1)
        table = torch.cat([fixed[:, :1], ctx.to(fixed.dtype), fixed[:, 1 + self.n_ctx :]], dim=1)
        if self.position == "end":
            return table
        index = self.position_index.unsqueeze(-1).expand(-1, -1, table.shape[-1])
        return torch.gather(table, 1, index)
