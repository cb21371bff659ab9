"""The Qwen2 decoder of the audio LLM, written once for training, inference and export.

Weight names are those of a Hugging Face ``Qwen2ForCausalLM`` (and of the
``model.*`` / ``lm_head.*`` tensors of a Step-Audio-2-mini folder)::

    model.embed_tokens.weight                              [V, H]
    model.layers.N.input_layernorm.weight                  [H]
    model.layers.N.self_attn.{q,k,v}_proj.{weight,bias}    [h*dh | G*dh, H]
    model.layers.N.self_attn.o_proj.weight                 [H, h*dh]
    model.layers.N.post_attention_layernorm.weight         [H]
    model.layers.N.mlp.{gate,up}_proj.weight               [F, H]
    model.layers.N.mlp.down_proj.weight                    [H, F]
    model.norm.weight                                      [H]
    lm_head.weight                                         [V, H] (absent when tied)

The computation is Qwen2's: RMSNorm, rotary positions (``rope_theta``, the
``rotate_half`` convention), grouped-query attention (query head ``i`` uses
key/value head ``i // (h / G)``), SwiGLU MLP.  A layer is split into
:meth:`DecoderLayer.qkv` (projections + rotary) and :meth:`DecoderLayer.attend`
(attention over given keys/values + MLP) so that the export graphs in
:mod:`a2llm_ros.tools.export.graphs` can keep the key/value cache in their own
tensor layout while every piece of arithmetic stays here.

Gradient checkpointing: with ``Qwen2LM.gradient_checkpointing`` set, a module
in training mode with autograd recording runs each :class:`DecoderLayer` under
``torch.utils.checkpoint`` (non-reentrant): only the layer's inputs are kept
and the layer is run again in the backward pass.  The arithmetic is the same
call either way; inference and export (eval mode, or no grad) never checkpoint.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

#: Additive attention-mask value for forbidden positions.
MASK_MIN = torch.finfo(torch.float32).min

#: Per-layer key/value tensors, each [B, G, S, dh].
KV = Tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (computed in float32, as Qwen2)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):  # [..., H]
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    """Projections of grouped-query self-attention (biases on q, k, v as Qwen2)."""

    def __init__(self, hidden: int, n_heads: int, n_kv: int):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = n_heads, n_kv, hidden // n_heads
        self.q_proj = nn.Linear(hidden, n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, n_kv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, n_kv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(n_heads * self.head_dim, hidden, bias=False)


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, hidden: int, ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ff, bias=False)
        self.up_proj = nn.Linear(hidden, ff, bias=False)
        self.down_proj = nn.Linear(ff, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def use_checkpointing(module: nn.Module) -> bool:
    """Whether ``module`` recomputes its blocks in backward: its ``gradient_checkpointing``
    flag is set, it is in training mode and autograd is recording."""
    return (bool(getattr(module, "gradient_checkpointing", False)) and module.training
            and torch.is_grad_enabled())


def rotate(x, cos, sin):
    """Rotary embedding: x [B, h, T, dh], cos/sin [T, dh]."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


def attention(q, k, v, bias=None):
    """q [B, h, T, dh], k/v [B, h, S, dh], additive bias broadcastable to [B, h, T, S]."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # [B, h, T, S]
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)


class DecoderLayer(nn.Module):
    """Pre-norm attention + MLP block."""

    def __init__(self, hidden: int, n_heads: int, n_kv: int, ff: int, eps: float):
        super().__init__()
        self.self_attn = Attention(hidden, n_heads, n_kv)
        self.mlp = MLP(hidden, ff)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def qkv(self, x, cos, sin):
        """x [B, T, H] -> q [B, h, T, dh], k / v [B, G, T, dh] (rotary applied to q, k)."""
        a = self.self_attn
        B, T, _ = x.shape
        y = self.input_layernorm(x)
        q = a.q_proj(y).reshape(B, T, a.n_heads, a.head_dim).transpose(1, 2)
        k = a.k_proj(y).reshape(B, T, a.n_kv, a.head_dim).transpose(1, 2)
        v = a.v_proj(y).reshape(B, T, a.n_kv, a.head_dim).transpose(1, 2)
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def attend(self, x, q, k, v, bias=None):
        """x [B, T, H] + attention of q over k / v [B, G, S, dh] (+ bias) and the MLP."""
        a = self.self_attn
        rep = a.n_heads // a.n_kv
        B, G, S, dh = k.shape
        k = k[:, :, None].expand(B, G, rep, S, dh).reshape(B, a.n_heads, S, dh)
        v = v[:, :, None].expand(B, G, rep, S, dh).reshape(B, a.n_heads, S, dh)
        o = attention(q, k, v, bias)  # [B, h, T, dh]
        o = o.transpose(1, 2).reshape(B, -1, a.n_heads * dh)
        x = x + a.o_proj(o)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward(self, x, cos, sin, bias=None, past: Optional[KV] = None):
        """x [B, T, H] (+ keys/values [B, G, S, dh] of S earlier positions) ->
        (x [B, T, H], k / v [B, G, S + T, dh])."""
        q, k, v = self.qkv(x, cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        return self.attend(x, q, k, v, bias), k, v


class Qwen2Model(nn.Module):
    """Embedding, decoder layers and final norm (``model.*``)."""

    def __init__(self, vocab_size: int, hidden: int, n_layers: int, n_heads: int, n_kv: int,
                 ff: int, eps: float, rope_theta: float):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden)
        self.layers = nn.ModuleList([DecoderLayer(hidden, n_heads, n_kv, ff, eps)
                                     for _ in range(n_layers)])
        self.norm = RMSNorm(hidden, eps)
        self.head_dim, self.rope_theta = hidden // n_heads, rope_theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)  # [dh / 2]

    def _inv_freq(self, device=None):
        dh = self.head_dim
        steps = torch.arange(0, dh, 2, dtype=torch.float32, device=device)
        return 1.0 / (self.rope_theta ** (steps / dh))

    def init_rope(self) -> None:
        """Recompute the rotary table (after the module was built on the meta device)."""
        self.inv_freq = self._inv_freq(self.norm.weight.device)

    def rope(self, pos):
        """Absolute positions [T] -> (cos, sin) [T, dh] in float32."""
        freqs = pos.float()[:, None] * self.inv_freq[None]  # [T, dh / 2]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


class Qwen2LM(nn.Module):
    """``model`` + ``lm_head``: the causal LM of Qwen2 / Step-Audio-2's text part."""

    def __init__(self, vocab_size: int, hidden: int, n_layers: int, n_heads: int, n_kv: int,
                 ff: int, eps: float = 1e-6, rope_theta: float = 1e6,
                 tie_word_embeddings: bool = False):
        super().__init__()
        if hidden % n_heads or n_heads % n_kv:
            raise ValueError(f"Qwen2LM: hidden {hidden} must divide by heads {n_heads}, "
                             f"heads by kv heads {n_kv}")
        self.model = Qwen2Model(vocab_size, hidden, n_layers, n_heads, n_kv, ff, eps,
                                rope_theta)
        self.lm_head = nn.Linear(hidden, vocab_size, bias=False)
        self.tie_word_embeddings = tie_word_embeddings
        if tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.n_layers, self.n_kv, self.head_dim = n_layers, n_kv, hidden // n_heads
        #: Recompute decoder layers in backward (training with grad only, see module doc).
        self.gradient_checkpointing = False

    # -- the interface used by the rest of the package -----------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, inputs_embeds, attention_mask=None, past: Optional[List[KV]] = None
                ) -> Tuple[torch.Tensor, List[KV]]:
        """Decoder stack: embeds [B, T, H] -> (hidden [B, T, H] after the final norm, kv).

        ``past``: per-layer keys/values [B, G, S, dh] of the S earlier positions
        (the new positions follow them); the returned list holds [B, G, S + T, dh].
        ``attention_mask`` [B, S + T] (1 = real, 0 = padding) masks padded keys;
        positions count from 0 for every row (right padding).
        """
        B, T, _ = inputs_embeds.shape
        S = 0 if not past else past[0][0].shape[2]
        pos = torch.arange(S, S + T, device=inputs_embeds.device)  # [T]
        cos, sin = self.model.rope(pos)
        keys = torch.arange(S + T, device=inputs_embeds.device)
        allowed = keys[None, :] <= pos[:, None]  # [T, S + T] causal
        allowed = allowed[None, None]  # [1, 1, T, S + T]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        zero = torch.zeros((), dtype=inputs_embeds.dtype, device=inputs_embeds.device)
        bias = torch.where(allowed, zero, torch.full_like(zero, MASK_MIN))
        x, present = inputs_embeds, []
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # [T, dh]
        recompute = use_checkpointing(self)
        for i, layer in enumerate(self.model.layers):
            layer_past = past[i] if past else None
            if recompute:
                x, k, v = checkpoint(layer, x, cos, sin, bias, layer_past, use_reentrant=False)
            else:
                x, k, v = layer(x, cos, sin, bias, layer_past)
            present.append((k, v))
        return self.model.norm(x), present

    def logits(self, hidden):
        """LM head: hidden [..., H] -> logits [..., V]."""
        return self.lm_head(hidden)


__all__ = ["Qwen2LM", "DecoderLayer", "RMSNorm", "attention", "rotate", "use_checkpointing",
           "MASK_MIN", "KV"]
