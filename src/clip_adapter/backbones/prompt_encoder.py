"""Prompt encoders: a backbone's frozen text encoder run on prompt token *embeddings*, the hook prompt-learning
methods (CoOp) train through without knowing the backbone's internals.

:meth:`Backbone.prompt_encoder(classnames, n_ctx, init) <clip_adapter.backbones.base.Backbone.prompt_encoder>` returns
a :class:`ContextPromptEncoder`: prompts ``[start] ctx_1..ctx_M <class name>. [end]`` whose context slice is an
argument, giving the raw class text features (differentiable in the context). Three kinds exist:

* :class:`PromptEncoder`: open_clip's ``encode_text`` replayed on token embeddings (``OpenClipBackbone``);
* :class:`LitePromptEncoder`: MiniLM on token embeddings, mean-pooled, normalised and mapped by the lite backbone's
  alignment map (``LiteBackbone``): the same function ``encode_texts`` computes from strings;
* :class:`HFPromptEncoder`: a ``transformers`` ``CLIPModel`` / ``SiglipModel``'s own ``get_text_features`` with the
  token embeddings swapped for the prompt's (``HFBackbone``): positions, encoder, final layer norm and the family's
  pooling (CLIP: the end-of-text token, then ``text_projection``; SigLIP: the last position, then its ``head``) are
  the model's own code.
"""
from __future__ import annotations

import abc
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ContextPromptEncoder", "PromptEncoder", "LitePromptEncoder", "HFPromptEncoder", "text_tower",
           "encode_token_embeddings", "PLACEHOLDER"]

PLACEHOLDER = "X"  # CoOp's stand-in word for a context token; its embedding is replaced by the learned vector


def text_tower(backbone, who: str = "CoOp"):
    """The open_clip module that holds the text tower's parts (``token_embedding`` ... ``text_projection``).

    Raises a one-line ``ValueError`` for backbones without an open_clip token-level text encoder."""
    model = getattr(backbone, "model", None)
    bid = getattr(backbone, "id", type(backbone).__name__)
    hint = "use an open_clip backbone (e.g. --backbone RN50 or ViT-B-16) or --backbone lite"
    if model is None:
        raise ValueError(f"{who} needs a backbone with a token-level text encoder; {bid!r} "
                         f"({type(backbone).__name__}) only exposes sentence features; {hint}.")
    tower = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if tower is None or not all(hasattr(tower, a) for a in needed):
        raise ValueError(f"{who} needs a backbone with a token-level text encoder; the text tower of {bid!r} "
                         f"({type(tower).__name__}) has no open_clip token_embedding/transformer; {hint}.")
    if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
        raise ValueError(f"{who} supports open_clip text towers with a causal mask and no appended class token; "
                         f"{bid!r} uses a CoCa-style/padding-masked text tower.")
    return tower


class ContextPromptEncoder(abc.ABC):
    """Shared part of the prompt encoders: prompts ``[start] ctx_1..ctx_M <class name>. [end]`` as token embeddings
    with the context slice learnable. Subclasses set ``classnames``, ``n_ctx``, ``token_prefix`` (start token),
    ``token_suffix`` (class name onwards), ``init_embedding`` (the init phrase's or placeholder's embeddings) and
    implement :meth:`encode` on the assembled ``(C, L, width)`` embeddings."""

    classnames: list[str]
    n_ctx: int
    token_prefix: torch.Tensor
    token_suffix: torch.Tensor
    init_embedding: torch.Tensor

    @property
    def _device(self) -> torch.device:
        return self.token_prefix.device

    @property
    def width(self) -> int:
        return int(self.token_prefix.shape[-1])

    def init_context(self, class_specific: bool, std: float = 0.02, from_phrase: bool = False) -> torch.Tensor:
        """Initial context ``(M, width)`` (or ``(C, M, width)``): the phrase's embeddings or N(0, std)."""
        shape = (len(self.classnames), self.n_ctx, self.width) if class_specific else (self.n_ctx, self.width)
        if from_phrase:
            return self.init_embedding.expand(shape).clone()
        return (torch.randn(shape) * std).to(self._device)  # CPU RNG: the same init on every device

    def __call__(self, ctx: torch.Tensor) -> torch.Tensor:
        """Context ``(M, width)`` or ``(C, M, width)`` -> raw class text features ``(C, dim)``."""
        n = len(self.classnames)
        ctx = ctx.to(self.token_prefix.dtype)
        if ctx.ndim == 2:
            ctx = ctx.unsqueeze(0).expand(n, -1, -1)
        return self.encode(torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1))

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Prompt token embeddings ``(C, L, width)`` -> raw text features ``(C, dim)``, differentiable."""


class PromptEncoder(ContextPromptEncoder):
    """open_clip's ``encode_text`` on token embeddings, for the prompts ``"<context> <classname>."``.

    Args:
        backbone: an :class:`~clip_adapter.backbone.OpenClipBackbone` (frozen).
        classnames: class names (``_`` becomes a space, as CoOp does).
        n_ctx: number of context tokens (ignored when ``init`` is given).
        init: a phrase whose token embeddings initialise the context (``"a photo of a"``).

    ``encoder(ctx)`` maps the context ``(M, width)`` or ``(C, M, width)`` to raw text features ``(C, dim)``;
    gradients flow into ``ctx`` only (the encoder's parameters are frozen).
    """

    def __init__(self, backbone, classnames: Sequence[str], n_ctx: int = 16, init: str | None = None):
        self.tower = text_tower(backbone)
        tokenizer = backbone.tokenizer
        self.classnames = [c.replace("_", " ") for c in classnames]
        if init is not None:
            ctx_ids = _word_ids(tokenizer, init.replace("_", " ").strip())
            prefix = init.replace("_", " ").strip()
        else:
            ctx_ids = _word_ids(tokenizer, PLACEHOLDER) * n_ctx
            prefix = " ".join([PLACEHOLDER] * n_ctx)
        self.n_ctx = len(ctx_ids)
        prompts = [f"{prefix} {name}." for name in self.classnames]
        tokens = tokenizer(prompts)
        context_length = tokens.shape[1]
        pad_id = getattr(self.tower, "pad_id", 0) or 0
        if tokens[:, -1].ne(pad_id).any():  # no padding left: the tokenizer had to cut a prompt
            raise ValueError(f"A prompt of {self.n_ctx} context tokens plus a class name does not fit the text "
                             f"encoder's {context_length} tokens; use fewer context tokens (n_ctx).")
        if not (tokens[:, 1:1 + self.n_ctx] == torch.tensor(ctx_ids)).all():
            raise ValueError("The tokenizer did not keep the context tokens apart from the class names; "
                             f"prompt {prompts[0]!r} tokenized as {tokens[0, :1 + self.n_ctx + 2].tolist()}.")
        # Causal attention: tokens after the pooled (EOT) position never reach it, so drop them (exact, ~4x faster).
        keep = int(self._pool_index(tokens).max()) + 1 if self._causal(context_length) else context_length
        self.tokens = tokens[:, :keep].to(self.tower.token_embedding.weight.device)
        with torch.no_grad():
            emb = self.tower.token_embedding(self.tokens)
            self.token_prefix = emb[:, :1].clone()                  # [SOS]
            self.token_suffix = emb[:, 1 + self.n_ctx:].clone()     # class name, ".", [EOS], padding
            self.init_embedding = emb[0, 1:1 + self.n_ctx].clone()  # the phrase's (or "X"'s) embeddings

    def _pool_type(self) -> str:
        return getattr(self.tower, "text_pool_type", None) or getattr(self.tower, "pool_type", "argmax")

    def _eos_id(self):
        return getattr(self.tower, "text_eos_id", None) if hasattr(self.tower, "text_eos_id") \
            else getattr(self.tower, "eos_id", None)

    def _pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._pool_type() == "eos" and self._eos_id() is not None:
            return (tokens == self._eos_id()).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)  # EOT has the highest id (open_clip's "argmax" pooling)

    def _causal(self, length: int) -> bool:
        mask = getattr(self.tower, "attn_mask", None)
        if mask is None or self._pool_type() not in ("argmax", "eos") or mask.shape[-1] < length:
            return False
        upper = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        m = mask[:length, :length].cpu()
        return bool(torch.isinf(m[upper]).all() and (m[~upper] == 0).all())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return encode_token_embeddings(self.tower, x, self.tokens)


def encode_token_embeddings(tower, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip ``CLIP.encode_text`` from token embeddings ``x`` ``(n, L, width)`` (``L`` <= context length;
    ``tokens`` are the matching ids, used only to find the pooled position)."""
    from open_clip.transformer import text_global_pool
    cast = tower.transformer.get_cast_dtype()
    length = x.shape[1]
    x = x.to(cast) + tower.positional_embedding[:length].to(cast)
    mask = getattr(tower, "attn_mask", None)
    if mask is not None:
        mask = mask[:length, :length]
    x = tower.transformer(x, attn_mask=mask)  # open_clip's Transformer handles batch_first itself
    x = tower.ln_final(x)
    pool = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")
    eos = getattr(tower, "text_eos_id", None) if hasattr(tower, "text_eos_id") else getattr(tower, "eos_id", None)
    x = text_global_pool(x, tokens, pool, eos_token_id=eos)
    proj = tower.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x


class LitePromptEncoder(ContextPromptEncoder):
    """CoOp's prompt encoder for the offline ``lite`` backbone: MiniLM (BERT) on token embeddings.

    The prompt ``[CLS] ctx_1..ctx_M <class name>. [SEP]`` (padded per batch, padding masked out) runs through the
    frozen MiniLM; its outputs are mean-pooled over real tokens, L2-normalised and mapped into the image-feature
    space by the backbone's ridge alignment map, exactly as ``LiteBackbone.encode_texts`` does from strings. BERT's
    attention is bidirectional, so the class-name tokens also attend to the context (unlike CLIP's causal mask).
    """

    def __init__(self, backbone, classnames: Sequence[str], n_ctx: int = 16, init: str | None = None):
        st = backbone.text_model
        modules = [type(m).__name__ for m in st]
        pooling = getattr(st[1], "pooling_mode", None) if len(st) > 1 else None
        if modules != ["Transformer", "Pooling", "Normalize"] or pooling not in ("mean", None):
            raise ValueError(f"LitePromptEncoder expects a sentence-transformers Transformer -> mean Pooling -> "
                             f"Normalize model; got {modules} with pooling {pooling!r}.")
        if pooling is None and not getattr(st[1], "pooling_mode_mean_tokens", False):
            raise ValueError(f"LitePromptEncoder expects mean pooling; {st[1]!r} pools otherwise.")
        self.bert, self.alignment = st[0].auto_model, backbone.alignment
        tokenizer = st[0].tokenizer
        self.classnames = [c.replace("_", " ") for c in classnames]
        prefix = init.replace("_", " ").strip() if init is not None else " ".join([PLACEHOLDER] * n_ctx)
        ctx_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        self.n_ctx = len(ctx_ids)
        prompts = [f"{prefix} {name}." for name in self.classnames]
        batch = tokenizer(prompts, padding=True, return_tensors="pt")
        limit = int(st[0].max_seq_length)
        if batch["input_ids"].shape[1] > limit:
            raise ValueError(f"A prompt of {self.n_ctx} context tokens plus a class name does not fit the text "
                             f"encoder's {limit} tokens; use fewer context tokens (n_ctx).")
        ids = batch["input_ids"]
        if not (ids[:, 1:1 + self.n_ctx] == torch.tensor(ctx_ids)).all():
            raise ValueError("The tokenizer did not keep the context tokens apart from the class names; "
                             f"prompt {prompts[0]!r} tokenized as {ids[0, :1 + self.n_ctx + 2].tolist()}.")
        device = self.bert.get_input_embeddings().weight.device
        self.mask = batch["attention_mask"].to(device)
        with torch.no_grad():
            emb = self.bert.get_input_embeddings()(ids.to(device))
            self.token_prefix = emb[:, :1].clone()                  # [CLS]
            self.token_suffix = emb[:, 1 + self.n_ctx:].clone()     # class name, ".", [SEP], padding
            self.init_embedding = emb[0, 1:1 + self.n_ctx].clone()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(inputs_embeds=x, attention_mask=self.mask).last_hidden_state
        m = self.mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)  # sentence-transformers' mean pooling
        return self.alignment(F.normalize(pooled.float(), dim=-1).cpu()).to(x.device)


class HFPromptEncoder(ContextPromptEncoder):
    """CoOp's prompt encoder for the Hugging Face backbones (``transformers`` ``CLIPModel``, ``SiglipModel``).

    The prompts ``"<context> <class name>."`` are tokenized exactly as the backbone's ``encode_texts`` does (its
    ``tokenize``: CLIP pads to the longest prompt with an attention mask, SigLIP to the full length without one). To
    encode, the model's own ``get_text_features`` runs on those token ids while a forward hook on the text tower's
    ``token_embedding`` returns the assembled embeddings (start tokens, learned context, class name onwards) in place
    of the looked-up ones; the rest (positional embeddings, encoder with the family's mask, final layer norm,
    pooling and projection) is the model's code, so a context equal to a phrase's embeddings gives that phrase's
    ``encode_texts`` features, and a new ``transformers`` release cannot make the two drift apart.
    """

    def __init__(self, backbone, classnames: Sequence[str], n_ctx: int = 16, init: str | None = None):
        self.model, tokenizer = backbone.model, backbone.tokenizer
        embeddings = getattr(getattr(self.model, "text_model", None), "embeddings", None)
        self.token_embedding = getattr(embeddings, "token_embedding", None)
        if not isinstance(self.token_embedding, nn.Embedding):
            raise ValueError(f"CoOp expects the text tower of {backbone.id!r} at text_model.embeddings."
                             f"token_embedding (transformers CLIPModel / SiglipModel); "
                             f"{type(self.model).__name__} has none.")
        self.classnames = [c.replace("_", " ") for c in classnames]
        prefix = init.replace("_", " ").strip() if init is not None else " ".join([PLACEHOLDER] * n_ctx)
        ctx_ids = list(tokenizer(prefix, add_special_tokens=False)["input_ids"])
        self.n_ctx = len(ctx_ids)
        prompts = [f"{prefix} {name}." for name in self.classnames]
        longest = max(len(ids) for ids in tokenizer(prompts)["input_ids"])  # not truncated: is anything cut?
        if longest > backbone.context_length:
            raise ValueError(f"A prompt of {self.n_ctx} context tokens plus a class name does not fit the text "
                             f"encoder's {backbone.context_length} tokens; use fewer context tokens (n_ctx).")
        device = self.token_embedding.weight.device
        self.inputs = {k: v.to(device) for k, v in backbone.tokenize(prompts).items()}
        ids = self.inputs["input_ids"]
        start = _find(ids[0].tolist(), ctx_ids)  # after the start token (CLIP), or at 0 (SigLIP has none)
        if start is None or not (ids[:, start:start + self.n_ctx].cpu() == torch.tensor(ctx_ids)).all():
            raise ValueError("The tokenizer did not keep the context tokens apart from the class names; "
                             f"prompt {prompts[0]!r} tokenized as {ids[0, :self.n_ctx + 3].tolist()}.")
        with torch.no_grad():
            emb = self.token_embedding(ids)
            self.token_prefix = emb[:, :start].clone()                          # start token(s), maybe none
            self.token_suffix = emb[:, start + self.n_ctx:].clone()             # class name, ".", end, padding
            self.init_embedding = emb[0, start:start + self.n_ctx].clone()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:2] != self.inputs["input_ids"].shape:
            raise ValueError(f"Prompt embeddings of shape {tuple(x.shape)} do not match the prompts' tokens "
                             f"{tuple(self.inputs['input_ids'].shape)}.")
        handle = self.token_embedding.register_forward_hook(lambda _module, _args, _out: x)
        try:
            out = self.model.get_text_features(**self.inputs)
        finally:
            handle.remove()
        # transformers >= 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor.
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def _find(seq: list[int], part: list[int]) -> int | None:
    """The first index where ``part`` occurs in ``seq``."""
    n = len(part)
    return next((i for i in range(len(seq) - n + 1) if n and seq[i:i + n] == part), None)


def _word_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without start/end tokens."""
    if hasattr(tokenizer, "encode"):
        return list(tokenizer.encode(text))
    ids = tokenizer([text])[0]
    return [int(t) for t in ids[1:int(ids.argmax())]]
