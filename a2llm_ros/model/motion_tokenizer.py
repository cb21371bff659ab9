"""Motion tokenizer: a residual-VQ VAE over FLAME frames.

Frames [B, T, D] at ``FLAME_FPS`` (25 fps, D = 58 for 50 expressions) are
encoded by a 1-D conv net to one latent per ``frames_per_latent`` (= 5) frames,
i.e. 5 Hz, quantised by a residual VQ with ``n_levels`` (6) codebooks of
``codebook_size`` (256) codes, and decoded back to frames.

* The encoder is non-causal (it is only used offline to tokenize data).
* The decoder is causal: every conv only looks left, and the upsampler maps
  each latent to its own 5 frames.  :meth:`MotionTokenizer.decode_step` decodes
  any number of 200 ms segments with an explicit :class:`DecodeState` carrying
  the left context, and gives the same frames as :meth:`MotionTokenizer.decode`
  on the whole sequence.
* Codebooks are buffers updated by EMA (no gradients), initialised by k-means
  on the first training batch, with dead codes (unused for
  ``dead_code_steps`` training steps) re-seeded from random encoder outputs.
* Per-dimension normalisation statistics are buffers: ``encode`` takes raw
  frames and ``decode`` returns raw frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from a2llm_ros.model.configs import MotionTokenizerConfig

#: Smallest standard deviation used to normalise a frame dimension.
MIN_STD = 1e-5
#: Laplace smoothing of the EMA cluster sizes.
EMA_EPS = 1e-5


@dataclass
class DecodeState:
    """Left context of the causal decoder: one cache per causal conv, in order.

    ``caches[i]`` is [B, C_i, ctx_i]; ``n_segments`` counts decoded segments.
    """

    caches: List[torch.Tensor]
    n_segments: int = 0


# ----------------------------------------------------------------------------- conv blocks

def _dilation(i: int) -> int:
    return 3 ** (i % 3)


class ResBlock(nn.Module):
    """Non-causal residual block: x + conv1x1(act(conv_k(act(x))))."""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        pad = (kernel - 1) * dilation // 2
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation, padding=pad)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x):  # [B, C, T] -> [B, C, T]
        return x + self.proj(F.silu(self.conv(F.silu(x))))


class CausalConv1d(nn.Module):
    """Conv1d that only looks left; ``cache`` holds the previous ``context`` inputs."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation)
        self.context = (kernel - 1) * dilation

    def empty_cache(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(batch, self.conv.in_channels, self.context)

    def forward(self, x, cache):  # [B, Cin, T], [B, Cin, ctx] -> [B, Cout, T], new cache
        xin = torch.cat([cache, x], dim=-1)  # [B, Cin, ctx + T]
        new_cache = xin[..., xin.shape[-1] - self.context:]
        return self.conv(xin), new_cache


class CausalResBlock(nn.Module):
    """Causal residual block with one cached conv."""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.conv = CausalConv1d(channels, channels, kernel, dilation)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x, cache):  # [B, C, T] -> [B, C, T], new cache
        h, cache = self.conv(F.silu(x), cache)
        return x + self.proj(F.silu(h)), cache


class Encoder(nn.Module):
    """Frames [B, D, T] -> latents [B, C, T / F] (non-causal)."""

    def __init__(self, cfg: MotionTokenizerConfig):
        super().__init__()
        h, k = cfg.hidden, cfg.enc_kernel
        self.inp = nn.Conv1d(cfg.frame_dim, h, k, padding=k // 2)
        self.frame_blocks = nn.Sequential(
            *[ResBlock(h, k, _dilation(i)) for i in range(cfg.enc_depth)])
        self.down = nn.Conv1d(h, h, cfg.frames_per_latent, stride=cfg.frames_per_latent)
        self.latent_blocks = nn.Sequential(
            *[ResBlock(h, k, _dilation(i)) for i in range(cfg.enc_depth)])
        self.out = nn.Conv1d(h, cfg.latent_dim, 1)

    def forward(self, x):  # [B, D, T] -> [B, C, S]
        x = self.frame_blocks(self.inp(x))  # [B, H, T]
        x = self.latent_blocks(self.down(x))  # [B, H, S]
        return self.out(F.silu(x))


class CausalDecoder(nn.Module):
    """Latents [B, C, S] -> frames [B, D, F*S]; each output frame sees only latents <= its own."""

    def __init__(self, cfg: MotionTokenizerConfig):
        super().__init__()
        h, k = cfg.hidden, cfg.dec_kernel
        self.inp = CausalConv1d(cfg.latent_dim, h, k)
        self.latent_blocks = nn.ModuleList(
            [CausalResBlock(h, k, _dilation(i)) for i in range(cfg.dec_depth)])
        # kernel == stride: latent s maps to frames [F*s, F*s + F) only
        self.up = nn.ConvTranspose1d(h, h, cfg.frames_per_latent, stride=cfg.frames_per_latent)
        self.frame_blocks = nn.ModuleList(
            [CausalResBlock(h, k, _dilation(i)) for i in range(cfg.dec_depth)])
        self.out = nn.Conv1d(h, cfg.frame_dim, 1)

    def causal_convs(self) -> List[CausalConv1d]:
        return [self.inp] + [b.conv for b in self.latent_blocks] + \
            [b.conv for b in self.frame_blocks]

    def forward(self, z, caches):  # [B, C, S], list -> [B, D, F*S], new list
        new = []
        x, c = self.inp(z, caches[0])
        new.append(c)
        i = 1
        for block in self.latent_blocks:
            x, c = block(x, caches[i])  # [B, H, S]
            new.append(c)
            i += 1
        x = self.up(F.silu(x))  # [B, H, F*S]
        for block in self.frame_blocks:
            x, c = block(x, caches[i])
            new.append(c)
            i += 1
        return self.out(F.silu(x)), new


# ----------------------------------------------------------------------------- quantizer

def kmeans(x: torch.Tensor, k: int, iters: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Plain k-means on x [N, C]; returns centres [k, C] and cluster sizes [k].

    With fewer points than centres, points are drawn with replacement and
    jittered so the duplicates can separate later.
    """
    n = x.shape[0]
    if n >= k:
        centres = x[torch.randperm(n, device=x.device)[:k]].clone()
    else:
        centres = x[torch.randint(n, (k,), device=x.device)].clone()
        centres += 1e-3 * x.std().clamp_min(1e-6) * torch.randn_like(centres)
    counts = torch.zeros(k, device=x.device, dtype=x.dtype)
    for _ in range(iters):
        idx = torch.cdist(x, centres).argmin(dim=1)  # [N]
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, idx, x)
        used = counts > 0
        centres[used] = sums[used] / counts[used, None]
    return centres, counts


class ResidualVQ(nn.Module):
    """Residual VQ with EMA codebooks, k-means init and dead-code reset.

    All codebook state lives in buffers: ``codebooks`` [L, K, C],
    ``ema_size`` [L, K], ``ema_sum`` [L, K, C], ``unused_steps`` [L, K] and
    the flag ``initialized``.
    """

    def __init__(self, cfg: MotionTokenizerConfig):
        super().__init__()
        L, K, C = cfg.n_levels, cfg.codebook_size, cfg.latent_dim
        self.cfg = cfg
        self.register_buffer("codebooks", torch.randn(L, K, C) * 0.1)
        self.register_buffer("ema_size", torch.ones(L, K))
        self.register_buffer("ema_sum", self.codebooks.clone())
        self.register_buffer("unused_steps", torch.zeros(L, K, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(False))
        #: Diagnostics of the last training update (perplexity and resets per level).
        self.last_stats: Dict[str, List[float]] = {}
        #: Data-parallel training: concatenates a tensor over all ranks (rank order), so
        #: the k-means init and EMA updates see the global batch, as in one process.
        self.gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    @staticmethod
    def _nearest(x, codebook):  # [N, C], [K, C] -> [N]
        d = (x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.t()
             + codebook.pow(2).sum(1)[None])  # [N, K]
        return d.argmin(dim=1)

    def lookup(self, codes):  # [B, S, L] -> [B, S, C]
        return sum(self.codebooks[level][codes[..., level]]
                   for level in range(codes.shape[-1]))

    @torch.no_grad()
    def _init_level(self, level: int, x):  # x [N, C]
        if self.gather is not None:
            x = self.gather(x)  # [N * ranks, C]
        centres, counts = kmeans(x, self.cfg.codebook_size, self.cfg.kmeans_iters)
        self.codebooks[level] = centres
        self.ema_size[level] = counts.clamp_min(1.0)
        self.ema_sum[level] = centres * self.ema_size[level, :, None]
        self.unused_steps[level] = 0

    @torch.no_grad()
    def _ema_update(self, level: int, x, idx):  # x [N, C], idx [N]
        if self.gather is not None:
            x, idx = self.gather(x), self.gather(idx)  # the global batch's rows
        K, decay = self.cfg.codebook_size, self.cfg.ema_decay
        counts = torch.bincount(idx, minlength=K).to(x.dtype)  # [K]
        sums = torch.zeros(K, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, idx, x)
        self.ema_size[level].mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum[level].mul_(decay).add_(sums, alpha=1 - decay)
        size = self.ema_size[level]
        n = size.sum()
        smoothed = (size + EMA_EPS) / (n + K * EMA_EPS) * n  # [K]
        self.codebooks[level] = self.ema_sum[level] / smoothed[:, None]
        self.unused_steps[level] = torch.where(
            counts > 0, torch.zeros_like(self.unused_steps[level]), self.unused_steps[level] + 1)
        dead = self.unused_steps[level] >= self.cfg.dead_code_steps  # [K]
        n_dead = int(dead.sum())
        if n_dead:
            fresh = x[torch.randint(x.shape[0], (n_dead,), device=x.device)]  # [n_dead, C]
            self.codebooks[level][dead] = fresh
            self.ema_sum[level][dead] = fresh
            self.ema_size[level][dead] = 1.0
            self.unused_steps[level][dead] = 0
        p = counts / counts.sum()
        perplexity = float(torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum()))
        self.last_stats.setdefault("perplexity", []).append(perplexity)
        self.last_stats.setdefault("reset", []).append(float(n_dead))

    def forward(self, z, update: bool = False):
        """Quantise z [B, S, C] -> (straight-through z_q [B, S, C], codes [B, S, L], commit).

        With ``update`` (training) the codebooks are k-means-initialised on
        the first call and then EMA-updated from this batch.
        """
        z = z.float()  # codebooks stay float32 (also under autocast)
        B, S, C = z.shape
        residual = z.reshape(B * S, C)  # [N, C]
        init = update and not bool(self.initialized)
        if update:
            self.last_stats = {}
        quantised = torch.zeros_like(residual)
        codes, commit = [], z.new_zeros(())
        for level in range(self.cfg.n_levels):
            if init:
                self._init_level(level, residual.detach())
            idx = self._nearest(residual.detach(), self.codebooks[level])  # [N]
            q = self.codebooks[level][idx]  # [N, C]
            commit = commit + F.mse_loss(residual, q)
            if update:
                self._ema_update(level, residual.detach(), idx)
            quantised = quantised + q
            residual = residual - q
            codes.append(idx)
        if init:
            self.initialized.fill_(True)
        flat = z.reshape(B * S, C)
        z_q = flat + (quantised - flat).detach()  # straight-through estimator
        return z_q.reshape(B, S, C), torch.stack(codes, dim=-1).reshape(B, S, -1), commit


# ----------------------------------------------------------------------------- tokenizer

def _as_tensor(values) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach()
    return torch.as_tensor(np.asarray(values))


class MotionTokenizer(nn.Module):
    """RVQ-VAE motion tokenizer: raw frames [B, T, D] <-> codes [B, T/5, L]."""

    def __init__(self, cfg: Optional[MotionTokenizerConfig] = None):
        super().__init__()
        self.cfg = cfg or MotionTokenizerConfig()
        D = self.cfg.frame_dim
        self.encoder = Encoder(self.cfg)
        self.quantizer = ResidualVQ(self.cfg)
        self.decoder = CausalDecoder(self.cfg)
        self.register_buffer("norm_mean", torch.zeros(D))
        self.register_buffer("norm_std", torch.ones(D))

    # -- normalisation ------------------------------------------------------------------
    @torch.no_grad()
    def set_normalization(self, mean, std) -> None:
        """Set per-dimension statistics (array-likes of size D) of the training frames."""
        mean, std = (_as_tensor(v).to(self.norm_mean) for v in (mean, std))
        if mean.shape != self.norm_mean.shape or std.shape != self.norm_std.shape:
            raise ValueError(f"normalisation stats must have shape {tuple(self.norm_mean.shape)}")
        self.norm_mean.copy_(mean)
        self.norm_std.copy_(std.clamp_min(MIN_STD))

    def set_normalization_from_frames(self, frames) -> None:
        """Compute and set mean/std over frames [..., D] (all leading dims pooled)."""
        x = _as_tensor(frames).double().reshape(-1, self.frame_dim)
        self.set_normalization(x.mean(0).float(), x.std(0).float())

    def normalize(self, frames):  # [..., D] raw -> normalised
        return (frames - self.norm_mean) / self.norm_std

    def denormalize(self, x):  # [..., D] normalised -> raw
        return x * self.norm_std + self.norm_mean

    # -- properties ---------------------------------------------------------------------
    @property
    def frame_dim(self) -> int:
        return self.cfg.frame_dim

    def n_params(self) -> int:
        """Number of trainable parameters (codebooks are buffers, not counted)."""
        return sum(p.numel() for p in self.parameters())

    def _check_frames(self, frames):
        if frames.dim() != 3 or frames.shape[-1] != self.frame_dim:
            raise ValueError(f"expected frames [B, T, {self.frame_dim}], "
                             f"got {tuple(frames.shape)}")
        if frames.shape[1] % self.cfg.frames_per_latent:
            raise ValueError(f"T={frames.shape[1]} is not a multiple of "
                             f"{self.cfg.frames_per_latent}")

    # -- encode -------------------------------------------------------------------------
    def encode_latent(self, frames):  # [B, T, D] raw -> continuous latents [B, S, C]
        self._check_frames(frames)
        x = self.normalize(frames).transpose(1, 2)  # [B, D, T]
        return self.encoder(x).transpose(1, 2)  # [B, S, C]

    @torch.no_grad()
    def encode(self, frames) -> torch.Tensor:
        """Raw frames [B, T, D] (T multiple of 5) -> codes LongTensor [B, T/5, L]."""
        _, codes, _ = self.quantizer(self.encode_latent(frames), update=False)
        return codes

    def codes_to_latent(self, codes) -> torch.Tensor:
        """Codes [B, S, L] -> quantised latents [B, S, C] (sum of per-level codes)."""
        return self.quantizer.lookup(codes)

    # -- decode -------------------------------------------------------------------------
    def init_decode_state(self, batch_size: int) -> DecodeState:
        """Empty left context (zeros, as the whole-sequence decode pads) for a new stream."""
        like = self.norm_mean
        return DecodeState([c.empty_cache(batch_size, like) for c in self.decoder.causal_convs()])

    def decode_latent_step(self, latents, state: DecodeState):
        """Latents [B, n, C] + state -> (raw frames [B, 5n, D], new state)."""
        if latents.shape[1] == 0:
            return latents.new_zeros(latents.shape[0], 0, self.frame_dim), state
        y, caches = self.decoder(latents.transpose(1, 2), state.caches)  # [B, D, 5n]
        frames = self.denormalize(y.transpose(1, 2))
        return frames, DecodeState(caches, state.n_segments + latents.shape[1])

    def decode_step(self, codes, state: DecodeState):
        """Codes [B, n, L] of the next n segments -> (raw frames [B, 5n, D], new state)."""
        return self.decode_latent_step(self.codes_to_latent(codes), state)

    def decode(self, codes) -> torch.Tensor:
        """Codes [B, S, L] -> raw frames [B, 5S, D] (same as stepping segment by segment)."""
        frames, _ = self.decode_step(codes, self.init_decode_state(codes.shape[0]))
        return frames

    # -- training -----------------------------------------------------------------------
    def forward(self, frames) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Raw frames [B, T, D] -> (raw reconstruction [B, T, D], losses).

        Losses (all on normalised frames): ``recon`` (MSE), ``velocity`` and
        ``acceleration`` (MSE of first/second time differences), ``commit``
        (unweighted sum over levels of the commitment MSE) and ``total`` =
        w_recon*recon + w_velocity*velocity + w_acceleration*acceleration +
        commitment_weight*commit.  In training mode the codebooks are updated.
        """
        cfg = self.cfg
        z = self.encode_latent(frames)  # [B, S, C]
        z_q, _, commit = self.quantizer(z, update=self.training)
        state = self.init_decode_state(frames.shape[0])
        y, _ = self.decoder(z_q.transpose(1, 2), state.caches)
        y = y.transpose(1, 2)  # [B, T, D] normalised
        x = self.normalize(frames)
        losses = {"recon": F.mse_loss(y, x)}
        dy, dx = y.diff(dim=1), x.diff(dim=1)
        losses["velocity"] = F.mse_loss(dy, dx) if dx.shape[1] else y.new_zeros(())
        ddy, ddx = dy.diff(dim=1), dx.diff(dim=1)
        losses["acceleration"] = F.mse_loss(ddy, ddx) if ddx.shape[1] else y.new_zeros(())
        losses["commit"] = commit
        losses["total"] = (cfg.w_recon * losses["recon"] + cfg.w_velocity * losses["velocity"]
                           + cfg.w_acceleration * losses["acceleration"]
                           + cfg.commitment_weight * commit)
        return self.denormalize(y), losses
