"""Whisper-style audio encoder with a Step-Audio-2-style adaptor.

Pipeline (rates in Hz)::

    log-mel [B, M, T] @ 100
      -> Conv1d(M, d, 3, pad 1) + GELU -> Conv1d(d, d, 3, stride 2, pad 1) + GELU  @ 50
      -> + positions (sinusoidal, Whisper, or learned) -> pre-LN Transformer x N -> LN
      -> AvgPool1d(2, 2)                                                      @ 25
      -> adaptor: Conv1d(d, a, 3, stride 2, pad 1) + GELU -> Linear(a, H) + GELU
         -> Linear(H, H)                                                      @ 12.5
    -> [B, ceil(T / 8), H]   (H = LLM hidden size)

Preset facts and assumptions
----------------------------
* ``paper``: Whisper-large-v3 encoder sizes (Whisper-large-v3 facts: 128 mel
  bins, d_model 1280, 32 layers, 20 heads, FFN 5120, 1500 positions = 30 s at
  50 Hz, sinusoidal positions).  Step-Audio-2 facts: the encoder output is
  pooled to 25 Hz and an adaptor (conv stride 2 + linear layers) brings it to
  12.5 Hz and the LLM width 3584.  Assumption: adaptor width 2048 and GELU.
* ``edge``: Whisper-base sizes (Whisper-base facts: d 512, 6 layers, 8 heads,
  FFN 2048; 80 mels) with the adaptor to Qwen2.5-0.5B's 896.  Assumption.
* ``tiny``: small sizes chosen for CPU tests (assumption).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from a2llm_ros.configbase import ConfigBase
from a2llm_ros.constants import AUDIO_ADAPTOR_RATE, AUDIO_ENCODER_RATE, MEL_FRAME_RATE

#: Mel frames (100 Hz) per LLM audio position (12.5 Hz).
MEL_FRAMES_PER_POSITION = int(MEL_FRAME_RATE / AUDIO_ADAPTOR_RATE)  # 8
#: Encoder transformer rate (Hz) after the stride-2 conv.
ENCODER_TRANSFORMER_RATE = MEL_FRAME_RATE // 2  # 50


@dataclass
class AudioEncoderConfig(ConfigBase):
    """Hyper-parameters of :class:`AudioEncoder` (see module docstring for presets)."""

    n_mels: int = 80
    d_model: int = 512
    n_layers: int = 6
    n_heads: int = 8
    ff: int = 2048
    max_positions: int = 1500   # 50 Hz positions: 30 s
    positions: str = "sinusoidal"   # or "learned"
    adaptor_hidden: int = 1024
    llm_hidden: int = 896
    dropout: float = 0.0

    PRESETS = {
        "tiny": dict(n_mels=80, d_model=128, n_layers=2, n_heads=4, ff=384,
                     adaptor_hidden=256, llm_hidden=256),
        "edge": dict(n_mels=80, d_model=512, n_layers=6, n_heads=8, ff=2048,
                     adaptor_hidden=1024, llm_hidden=896),
        "paper": dict(n_mels=128, d_model=1280, n_layers=32, n_heads=20, ff=5120,
                      adaptor_hidden=2048, llm_hidden=3584),
    }

    def __post_init__(self):
        if self.positions not in ("sinusoidal", "learned"):
            raise ValueError("AudioEncoderConfig.positions must be 'sinusoidal' or 'learned'")
        if self.d_model % self.n_heads:
            raise ValueError("AudioEncoderConfig: d_model must be divisible by n_heads")


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's sinusoidal position table ``[length, channels]``."""
    half = channels // 2
    inc = math.log(max_timescale) / (half - 1)
    inv = torch.exp(-inc * torch.arange(half, dtype=torch.float32))  # [half]
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None]  # [length, half]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def n_positions(n_mel_frames: int) -> int:
    """LLM audio positions (12.5 Hz) produced from ``n_mel_frames`` (100 Hz) frames."""
    t50 = (n_mel_frames + 1) // 2  # conv stride 2, pad 1, kernel 3
    t25 = (t50 + 1) // 2  # avg-pool 2 with ceil_mode
    return (t25 + 1) // 2  # adaptor conv stride 2


class EncoderLayer(nn.Module):
    """Pre-LN Transformer encoder layer (self-attention + GELU MLP)."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        d = cfg.d_model
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout,
                                          batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.ff), nn.GELU(), nn.Linear(cfg.ff, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, pad_mask=None):  # x [B, T, d], pad_mask [B, T] True = padding
        h = self.ln1(x)
        h, _ = self.attn(h, h, h, key_padding_mask=pad_mask, need_weights=False)
        x = x + self.drop(h)
        return x + self.drop(self.mlp(self.ln2(x)))


class AudioEncoder(nn.Module):
    """Log-mel [B, M, T] at 100 Hz -> LLM input embeddings [B, ceil(T/8), H] at 12.5 Hz."""

    def __init__(self, cfg: Optional[AudioEncoderConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or AudioEncoderConfig()
        d = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.n_mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        if cfg.positions == "learned":
            self.pos = nn.Parameter(sinusoids(cfg.max_positions, d) * 0.1)
        else:
            self.register_buffer("pos", sinusoids(cfg.max_positions, d), persistent=False)
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.n_layers)])
        self.ln_post = nn.LayerNorm(d)
        self.adaptor_conv = nn.Conv1d(d, cfg.adaptor_hidden, 3, stride=2, padding=1)
        self.adaptor_mlp = nn.Sequential(nn.Linear(cfg.adaptor_hidden, cfg.llm_hidden),
                                         nn.GELU(), nn.Linear(cfg.llm_hidden, cfg.llm_hidden))

    def encode(self, mel, lengths=None):
        """mel [B, M, T] -> (states [B, ceil(T/2), d] at 50 Hz, valid mask [B, T50] or None).

        With frame ``lengths`` [B] every valid output equals the output of the
        unpadded sample alone (padding is zeroed between stages, as the convs'
        own zero padding would be).
        """
        if mel.shape[1] != self.cfg.n_mels:
            raise ValueError(f"expected {self.cfg.n_mels} mel bins, got {mel.shape[1]}")
        x = F.gelu(self.conv1(mel))  # [B, d, T]
        valid50 = None
        if lengths is not None:
            x = x * _valid(lengths, x.shape[-1])[:, None].to(x.dtype)
            valid50 = _valid((lengths + 1) // 2, (x.shape[-1] + 1) // 2)  # [B, T50]
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, T50, d]
        if x.shape[1] > self.cfg.max_positions:
            raise ValueError(f"audio too long: {x.shape[1]} encoder frames > "
                             f"{self.cfg.max_positions} ({self.cfg.max_positions / 50:.0f} s)")
        x = x + self.pos[:x.shape[1]].to(x.dtype)
        pad = None if valid50 is None else ~valid50
        for layer in self.layers:
            x = layer(x, pad)
        return self.ln_post(x), valid50

    def forward(self, mel, lengths=None):
        """mel [B, M, T] (+ frame ``lengths`` [B]) -> embeddings [B, n_positions(T), H]."""
        x, valid50 = self.encode(mel, lengths)  # [B, T50, d]
        x = _pair_mean(x, valid50)  # [B, T25, d] at AUDIO_ENCODER_RATE
        if lengths is not None:
            n25 = ((lengths + 1) // 2 + 1) // 2
            x = x * _valid(n25, x.shape[1])[..., None].to(x.dtype)
        x = F.gelu(self.adaptor_conv(x.transpose(1, 2))).transpose(1, 2)  # [B, T12.5, a]
        return self.adaptor_mlp(x)  # [B, T12.5, H]


def _valid(lengths, size: int):
    """Bool [B, size]: position < length."""
    return torch.arange(size, device=lengths.device)[None] < lengths[:, None]


def _pair_mean(x, valid=None):
    """Average pool 2 -> 1 along time of [B, T, d] (ceil mode; padding excluded)."""
    B, T, d = x.shape
    if valid is None:
        valid = torch.ones(B, T, dtype=torch.bool, device=x.device)
    w = valid.to(x.dtype)[..., None]  # [B, T, 1]
    if T % 2:
        x, w = F.pad(x, (0, 0, 0, 1)), F.pad(w, (0, 0, 0, 1))
    total = (x * w).reshape(B, -1, 2, d).sum(2)  # [B, ceil(T/2), d]
    count = w.reshape(B, -1, 2, 1).sum(2).clamp_min(1.0)
    return total / count


__all__ = ["AudioEncoderConfig", "AudioEncoder", "n_positions", "AUDIO_ENCODER_RATE",
           "MEL_FRAMES_PER_POSITION"]
