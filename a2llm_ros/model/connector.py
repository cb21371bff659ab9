"""Motion Connector: LLM speech-token hidden states -> RVQ motion codes.

Queries are the LLM's last hidden states of its speech tokens [B, 5S, H]
(25 Hz), pooled to one query per 200 ms segment (5 Hz) by a strided Conv1d
(kernel = stride = ``pool`` = 5) that also projects to ``d_model``.  A pre-LN
Transformer decoder runs causal self-attention over the queries and
cross-attention to a memory of earlier motion tokens: memory position 0 is a
learned BOS, memory position j >= 1 is the sum of the per-level code
embeddings of segment j-1, and query s sees memory positions 0..s only
(segment-wise autoregressive, teacher forcing in training).

Window: with W = ``max_segments``, query s self-attends queries s-W+1..s and
cross-attends BOS (always) plus the motion tokens of segments s-W..s-1.
Positions enter only through learned relative biases per head (initialised
ALiBi-style, -slope * distance), so the same window applies to the batch
:meth:`MotionConnector.forward` and to the streaming
:meth:`MotionConnector.step`, and a stream can run forever.

Heads (``coarse_to_fine``): the head of RVQ level l sees the decoder output
plus the sum of embeddings of the codes of levels < l of the same segment
(teacher-forced in training, the just-chosen codes when sampling), through a
small per-level MLP.  With ``coarse_to_fine=False`` every head sees only the
decoder output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from a2llm_ros.model.configs import ConnectorConfig


@dataclass
class ConnectorState:
    """Streaming state of :meth:`MotionConnector.step`, bounded by ``max_segments``.

    Per layer, ``self_k``/``self_v`` [B, h, n, dh] hold the self-attention keys
    and values of the last n <= W pooled queries, and ``mem_k``/``mem_v``
    [B, h, m, dh] the cross-attention keys and values of the motion tokens of
    the last m <= W segments (BOS excluded).  ``logits`` [B, L, K] are the
    logits used at the last step (None before the first).
    """

    self_k: List[torch.Tensor]
    self_v: List[torch.Tensor]
    mem_k: List[torch.Tensor]
    mem_v: List[torch.Tensor]
    n_segments: int = 0
    logits: Optional[torch.Tensor] = None


def _alibi_slopes(n_heads: int) -> torch.Tensor:
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / n_heads) for i in range(n_heads)])


class Attention(nn.Module):
    """Multi-head attention with a learned relative bias over distances 0..W-1 (+ BOS)."""

    def __init__(self, d: int, n_heads: int, window: int, dropout: float, bos: bool):
        super().__init__()
        self.h, self.dh, self.window, self.dropout = n_heads, d // n_heads, window, dropout
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.o = nn.Linear(d, d)
        slopes = _alibi_slopes(n_heads)  # [h]
        self.rel_bias = nn.Parameter(-slopes[:, None] * torch.arange(window)[None].float())
        self.bos_bias = nn.Parameter(torch.zeros(n_heads)) if bos else None

    def keys_values(self, x):  # [B, n, d] -> k, v [B, h, n, dh]
        B, n, _ = x.shape
        k, v = self.kv(x).view(B, n, 2, self.h, self.dh).permute(2, 0, 3, 1, 4)
        return k, v

    def bias_from_distance(self, dist):  # dist [Sq, Sk] (long) -> [h, Sq, Sk], -inf outside
        valid = (dist >= 0) & (dist < self.window)
        bias = self.rel_bias[:, dist.clamp(0, self.window - 1)]  # [h, Sq, Sk]
        return bias.masked_fill(~valid, float("-inf"))

    def with_bos(self, bias):  # [h, Sq, Sk] -> [h, Sq, 1 + Sk], BOS column first
        bos = self.bos_bias[:, None, None].expand(-1, bias.shape[1], 1)
        return torch.cat([bos, bias], dim=-1)

    def forward(self, x, k, v, bias):  # x [B, Sq, d], k/v [B, h, Sk, dh], bias [h, Sq, Sk]
        B, Sq, d = x.shape
        q = self.q(x).view(B, Sq, self.h, self.dh).transpose(1, 2)  # [B, h, Sq, dh]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype),
            dropout_p=self.dropout if self.training else 0.0)  # [B, h, Sq, dh]
        return self.o(out.transpose(1, 2).reshape(B, Sq, d))


class DecoderLayer(nn.Module):
    """Pre-LN layer: causal self-attention, cross-attention to motion memory, feed-forward."""

    def __init__(self, cfg: ConnectorConfig):
        super().__init__()
        d = cfg.d_model
        self.ln_self, self.ln_cross, self.ln_mem, self.ln_ff = (nn.LayerNorm(d) for _ in range(4))
        self.self_attn = Attention(d, cfg.n_heads, cfg.max_segments, cfg.dropout, bos=False)
        self.cross_attn = Attention(d, cfg.n_heads, cfg.max_segments, cfg.dropout, bos=True)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ff), nn.GELU(), nn.Dropout(cfg.dropout),
                                nn.Linear(cfg.ff, d))
        self.drop = nn.Dropout(cfg.dropout)

    def memory_kv(self, mem):  # [B, m, d] memory embeddings -> k, v [B, h, m, dh]
        return self.cross_attn.keys_values(self.ln_mem(mem))

    def forward(self, x, self_k, self_v, self_bias, mem_k, mem_v, cross_bias):
        """x [B, Sq, d]; self_k/v [B, h, Sk, dh] include x's own keys; mem_k/v include BOS."""
        x = x + self.drop(self.self_attn(self.ln_self(x), self_k, self_v, self_bias))
        x = x + self.drop(self.cross_attn(self.ln_cross(x), mem_k, mem_v, cross_bias))
        return x + self.drop(self.ff(self.ln_ff(x)))


class LevelHead(nn.Module):
    """Classifier of one RVQ level: residual MLP then logits over the codebook."""

    def __init__(self, d: int, n_codes: int):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU())
        self.out = nn.Linear(d, n_codes)

    def forward(self, x):  # [..., d] -> [..., K]
        h = self.ln(x)
        return self.out(h + self.mlp(h))


def sample_codes(logits, temperature: float = 0.0, generator=None, top_k: int = 0):
    """Logits [B, K] -> codes [B]; temperature 0 is greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class MotionConnector(nn.Module):
    """LLM speech hidden states [B, 5S, H] -> motion-code logits [B, S, L, K]."""

    def __init__(self, cfg: Optional[ConnectorConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or ConnectorConfig()
        if cfg.d_model % cfg.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        d, L, K = cfg.d_model, cfg.n_levels, cfg.codebook_size
        self.in_norm = nn.LayerNorm(cfg.llm_hidden)
        self.pool = nn.Conv1d(cfg.llm_hidden, d, cfg.pool, stride=cfg.pool)
        self.code_emb = nn.Embedding(L * K, d)     # memory: summed over levels
        self.bos = nn.Parameter(torch.randn(d) * 0.02)
        self.prefix_emb = nn.Embedding(L * K, d) if cfg.coarse_to_fine else None
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.n_layers)])
        self.out_norm = nn.LayerNorm(d)
        self.heads = nn.ModuleList([LevelHead(d, K) for _ in range(L)])
        self.register_buffer("level_offset", torch.arange(L) * K, persistent=False)
        nn.init.normal_(self.code_emb.weight, std=0.02)
        if self.prefix_emb is not None:
            nn.init.normal_(self.prefix_emb.weight, std=0.02)

    def n_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())

    # -- pieces shared by forward() and step() -------------------------------------------
    def pool_queries(self, speech_hidden):  # [B, 5S, H] -> [B, S, d]
        B, T, H = speech_hidden.shape
        if T % self.cfg.pool:
            raise ValueError(f"{T} speech positions is not a multiple of {self.cfg.pool}")
        x = self.in_norm(speech_hidden.to(self.pool.weight.dtype)).transpose(1, 2)  # [B, H, 5S]
        return self.pool(x).transpose(1, 2)  # [B, S, d]

    def memory_embed(self, codes):  # [B, S, L] -> [B, S, d]
        return self.code_emb(codes + self.level_offset).sum(dim=-2)

    def level_inputs(self, h, codes):  # h [B, S, d], codes [B, S, L] -> [B, S, L, d]
        """Head inputs: h plus, per level l, the embedding sum of the codes of levels < l."""
        inp = h.unsqueeze(2).expand(-1, -1, self.cfg.n_levels, -1)
        if self.prefix_emb is None:
            return inp
        e = self.prefix_emb(codes + self.level_offset)  # [B, S, L, d]
        prefix = torch.cumsum(e, dim=2) - e  # exclusive cumsum: levels < l
        return inp + prefix

    # -- training / batch ----------------------------------------------------------------
    def forward(self, speech_hidden, codes):
        """Teacher-forced logits [B, S, L, K] from hidden [B, 5S, H] and codes [B, S, L].

        Logits of segment s depend only on hidden states of segments <= s,
        codes of segments < s and (coarse-to-fine) codes of levels < l of s.
        """
        x = self.pool_queries(speech_hidden)  # [B, S, d]
        B, S, d = x.shape
        if codes.shape[:2] != (B, S):
            raise ValueError(f"codes {tuple(codes.shape)} do not match {S} segments")
        mem = torch.cat([self.bos.expand(B, 1, d), self.memory_embed(codes[:, :-1])], dim=1)
        pos = torch.arange(S, device=x.device)
        dist = pos[:, None] - pos[None, :]  # [S, S]: query s - key t (self) / key j (memory)
        for layer in self.layers:
            self_bias = layer.self_attn.bias_from_distance(dist)  # [h, S, S]
            cross_bias = layer.cross_attn.with_bos(
                layer.cross_attn.bias_from_distance(dist[:, 1:]))  # [h, S, S]
            k, v = layer.self_attn.keys_values(layer.ln_self(x))
            mk, mv = layer.memory_kv(mem)
            x = layer(x, k, v, self_bias, mk, mv, cross_bias)
        z = self.level_inputs(self.out_norm(x), codes)  # [B, S, L, d]
        return torch.stack([head(z[:, :, i]) for i, head in enumerate(self.heads)], dim=2)

    def loss(self, logits, codes, mask=None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Cross-entropy of logits [B, S, L, K] against codes [B, S, L].

        ``mask`` [B, S] (bool, True = valid) drops padded segments.  Returns
        (mean over levels of the per-level CE, list of per-level CE).
        """
        per_level = []
        for level in range(logits.shape[2]):
            ce = F.cross_entropy(logits[:, :, level].flatten(0, 1), codes[:, :, level].flatten(),
                                 reduction="none")  # [B*S]
            if mask is not None:
                m = mask.flatten().to(ce.dtype)
                ce = (ce * m).sum() / m.sum().clamp_min(1.0)
            else:
                ce = ce.mean()
            per_level.append(ce)
        return torch.stack(per_level).mean(), per_level

    # -- streaming ------------------------------------------------------------------------
    def init_state(self, batch_size: int) -> ConnectorState:
        """Empty streaming state for ``batch_size`` streams."""
        p = self.bos
        empty = p.new_zeros(batch_size, self.cfg.n_heads, 0, self.cfg.d_model // self.cfg.n_heads)
        n = self.cfg.n_layers
        return ConnectorState([empty] * n, [empty] * n, [empty] * n, [empty] * n)

    def step(self, hidden_segment, state: ConnectorState, temperature: float = 0.0,
             generator: Optional[torch.Generator] = None, top_k: int = 0
             ) -> Tuple[torch.Tensor, ConnectorState]:
        """One segment: hidden [B, 5, H] -> (codes [B, L], new state).

        Same computation as :meth:`forward` at that position, fed with the
        codes chosen at earlier steps.  ``temperature`` 0 is greedy; otherwise
        levels are sampled coarse to fine with ``generator`` (and optional
        ``top_k``).  The input state is not modified.
        """
        W = self.cfg.max_segments
        if hidden_segment.shape[1] != self.cfg.pool:
            raise ValueError(f"step() takes one segment [B, {self.cfg.pool}, H], "
                             f"got {tuple(hidden_segment.shape)}")
        x = self.pool_queries(hidden_segment)  # [B, 1, d]
        B, _, d = x.shape
        bos = self.bos.expand(B, 1, d)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            k, v = layer.self_attn.keys_values(layer.ln_self(x))  # [B, h, 1, dh]
            k = torch.cat([state.self_k[i], k], dim=2)[:, :, -W:]
            v = torch.cat([state.self_v[i], v], dim=2)[:, :, -W:]
            n = k.shape[2]
            dist = torch.arange(n - 1, -1, -1, device=x.device)[None]  # [1, n]
            self_bias = layer.self_attn.bias_from_distance(dist)  # [h, 1, n]
            bk, bv = layer.memory_kv(bos)
            mk = torch.cat([bk, state.mem_k[i]], dim=2)  # [B, h, 1 + m, dh]
            mv = torch.cat([bv, state.mem_v[i]], dim=2)
            m = state.mem_k[i].shape[2]
            mdist = torch.arange(m - 1, -1, -1, device=x.device)[None]  # [1, m]
            cross_bias = layer.cross_attn.with_bos(layer.cross_attn.bias_from_distance(mdist))
            x = layer(x, k, v, self_bias, mk, mv, cross_bias)
            new_k.append(k)
            new_v.append(v)
        codes, logits = self._sample_levels(self.out_norm(x)[:, 0], temperature, generator, top_k)
        mem = self.memory_embed(codes[:, None])  # [B, 1, d]
        mem_k, mem_v = [], []
        for i, layer in enumerate(self.layers):
            k, v = layer.memory_kv(mem)
            mem_k.append(torch.cat([state.mem_k[i], k], dim=2)[:, :, -W:])
            mem_v.append(torch.cat([state.mem_v[i], v], dim=2)[:, :, -W:])
        return codes, ConnectorState(new_k, new_v, mem_k, mem_v, state.n_segments + 1, logits)

    def _sample_levels(self, h, temperature, generator, top_k):
        """h [B, d] -> (codes [B, L], logits [B, L, K]), coarse to fine."""
        codes, logits = [], []
        prefix = torch.zeros_like(h)  # [B, d]
        for level, head in enumerate(self.heads):
            lg = head(h + prefix)  # [B, K]
            c = sample_codes(lg, temperature, generator, top_k)  # [B]
            if self.prefix_emb is not None:
                prefix = prefix + self.prefix_emb(c + level * self.cfg.codebook_size)
            codes.append(c)
            logits.append(lg)
        return torch.stack(codes, dim=1), torch.stack(logits, dim=1)

    @torch.no_grad()
    def generate(self, speech_hidden, temperature: float = 0.0,
                 generator: Optional[torch.Generator] = None, top_k: int = 0) -> torch.Tensor:
        """Codes [B, S, L] for hidden [B, 5S, H], by looping :meth:`step`."""
        P = self.cfg.pool
        S = speech_hidden.shape[1] // P
        if speech_hidden.shape[1] != S * P:
            raise ValueError(f"{speech_hidden.shape[1]} speech positions is not a multiple of {P}")
        state = self.init_state(speech_hidden.shape[0])
        out = []
        for s in range(S):
            codes, state = self.step(speech_hidden[:, s * P:(s + 1) * P], state,
                                     temperature, generator, top_k)
            out.append(codes)
        if not out:
            return speech_hidden.new_zeros(speech_hidden.shape[0], 0, self.cfg.n_levels,
                                           dtype=torch.long)
        return torch.stack(out, dim=1)
