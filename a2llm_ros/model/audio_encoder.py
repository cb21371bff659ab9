"""Step-Audio-2's audio encoder (Whisper-style) and adaptor, in Step's weight layout.

Pipeline (rates in Hz)::

    log-mel [B, M, T] @ 100
      -> conv1 (M -> d, k3, pad 1) + GELU -> conv2 (d -> d, k3, stride 2, pad 1) + GELU  @ 50
      -> + positional_embedding.weight[:T50] -> blocks x N (pre-LN) -> AvgPool1d(2, 2)   @ 25
      -> after_norm (LayerNorm)
    adapter: conv (d -> d, k3, stride 2, pad 1) + GELU -> linear1 (d -> a) + ReLU
      -> linear2 (a -> H)                                                               @ 12.5

Weight names (prefix ``encoder.`` / ``adapter.`` in a checkpoint, as in a
Step-Audio-2-mini folder): ``conv1``, ``conv2``, ``positional_embedding.weight``
(a stored table), ``blocks.N.attn.{query,key,value,out}`` (``key`` without
bias), ``blocks.N.attn_ln``, ``blocks.N.mlp.0`` / ``mlp.2`` (GELU between),
``blocks.N.mlp_ln``, ``after_norm``; ``adapter.conv``, ``adapter.linear1``,
``adapter.linear2``.  Attention scales q and k each by ``d_head ** -0.25``.

Step's prompt gets :func:`n_positions` ``<audio_patch>`` tokens for a piece of T
mel frames; the first that many adaptor outputs replace their embeddings.

Presets: ``paper`` / ``edge`` are Step-Audio-2-mini's ``audio_encoder_config``
(128 mels, 1280 wide, 32 layers, 20 heads, 1500 positions, adaptor 2048 ->
3584); ``tiny`` is the same module at CPU size.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from a2llm_ros.constants import AUDIO_ENCODER_RATE
from a2llm_ros.model.qwen2 import use_checkpointing
from a2llm_ros.model.configs import AudioEncoderConfig


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's sinusoidal position table ``[length, channels]`` (initial value)."""
    half = channels // 2
    inc = math.log(max_timescale) / (half - 1)
    inv = torch.exp(-inc * torch.arange(half, dtype=torch.float32))  # [half]
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None]  # [length, half]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def n_frames_50(n_mel_frames):
    """Encoder transformer positions (50 Hz) of ``n_mel_frames`` (conv2: k3, s2, pad 1)."""
    return (n_mel_frames - 1) // 2 + 1


class MultiHeadAttention(nn.Module):
    """Whisper-style attention (``query``/``key``/``value``/``out``; key without bias)."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x, bias=None):  # x [B, T, d], bias [B, 1, 1, T] additive
        B, T, d = x.shape
        h, dh = self.n_heads, d // self.n_heads
        scale = dh ** -0.25
        q = self.query(x).reshape(B, T, h, dh).transpose(1, 2) * scale  # [B, h, T, dh]
        k = self.key(x).reshape(B, T, h, dh).transpose(1, 2) * scale
        v = self.value(x).reshape(B, T, h, dh).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2))  # [B, h, T, T]
        if bias is not None:
            scores = scores + bias
        w = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        o = torch.matmul(w, v).transpose(1, 2).reshape(B, T, d)
        return self.out(o)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN self-attention + GELU MLP."""

    def __init__(self, d: int, n_heads: int, ff: int):
        super().__init__()
        self.attn = MultiHeadAttention(d, n_heads)
        self.attn_ln = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))
        self.mlp_ln = nn.LayerNorm(d)

    def forward(self, x, bias=None):
        x = x + self.attn(self.attn_ln(x), bias)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Log-mel [B, M, T] at 100 Hz -> encoder states [B, T25, d] at 25 Hz."""

    def __init__(self, cfg: Optional[AudioEncoderConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or AudioEncoderConfig()
        d = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.n_mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.positional_embedding = nn.Embedding(cfg.max_positions, d)
        with torch.no_grad():
            self.positional_embedding.weight.copy_(sinusoids(cfg.max_positions, d))
        self.blocks = nn.ModuleList([ResidualAttentionBlock(d, cfg.n_heads, cfg.ff)
                                     for _ in range(cfg.n_layers)])
        self.avg_pooler = nn.AvgPool1d(2, 2)
        self.after_norm = nn.LayerNorm(d)
        #: Recompute the blocks in backward (training with grad only, as ``Qwen2LM``).
        self.gradient_checkpointing = False

    def encode(self, mel, lengths=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """mel [B, M, T] -> (block output [B, T50, d] at 50 Hz, valid mask [B, T50] or None).

        With frame ``lengths`` [B] every valid output equals the output of the
        unpadded sample alone (padding is zeroed between stages, as the convs'
        own zero padding would be, and masked in attention).
        """
        if mel.shape[1] != self.cfg.n_mels:
            raise ValueError(f"expected {self.cfg.n_mels} mel bins, got {mel.shape[1]}")
        x = F.gelu(self.conv1(mel))  # [B, d, T]
        valid50, bias = None, None
        if lengths is not None:
            x = x * _valid(lengths, x.shape[-1])[:, None].to(x.dtype)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, T50, d]
        T50 = x.shape[1]
        if T50 > self.cfg.max_positions:
            raise ValueError(f"audio too long: {T50} encoder frames > {self.cfg.max_positions}"
                             f" ({self.cfg.max_positions / 50:.0f} s); split it into pieces")
        if lengths is not None:
            valid50 = _valid(n_frames_50(lengths), T50)  # [B, T50]
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            bias = torch.where(valid50, zero, torch.full_like(zero, -1e9))[:, None, None]
        x = x + self.positional_embedding.weight[:T50].to(x.dtype)
        recompute = use_checkpointing(self)
        for block in self.blocks:
            x = checkpoint(block, x, bias, use_reentrant=False) if recompute else block(x, bias)
        return x, valid50

    def forward(self, mel, lengths=None):
        """mel [B, M, T] (+ frame ``lengths`` [B]) -> states [B, T50 // 2, d] at 25 Hz."""
        x, valid50 = self.encode(mel, lengths)  # [B, T50, d]
        x = self.avg_pooler(x.transpose(1, 2)).transpose(1, 2)  # [B, T25, d]
        x = self.after_norm(x)
        if lengths is not None:  # zero what the unpadded sample would not have
            x = x * _valid(n_frames_50(lengths) // 2, x.shape[1])[..., None].to(x.dtype)
        return x


class Adapter(nn.Module):
    """Encoder states [B, T25, d] -> LLM embeddings [B, ceil(T25 / 2), H] at 12.5 Hz."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.conv = nn.Conv1d(cfg.d_model, cfg.d_model, 3, stride=2, padding=1)
        self.linear1 = nn.Linear(cfg.d_model, cfg.adaptor_hidden)
        self.linear2 = nn.Linear(cfg.adaptor_hidden, cfg.llm_hidden)

    def forward(self, x):
        x = F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)  # [B, T12.5, d]
        return self.linear2(F.relu(self.linear1(x)))  # [B, T12.5, H]


def _valid(lengths, size: int):
    """Bool [B, size]: position < length."""
    return torch.arange(size, device=lengths.device)[None] < lengths[:, None]


__all__ = ["AudioEncoderConfig", "AudioEncoder", "Adapter", "n_frames_50", "AUDIO_ENCODER_RATE"]
