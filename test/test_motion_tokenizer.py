"""Tests of the RVQ-VAE motion tokenizer (shapes, causal streaming decode, codebooks)."""
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from a2llm_ros.configbase import ConfigMismatchError
from a2llm_ros.constants import FLAME_FPS, FRAMES_PER_SEGMENT
from a2llm_ros.model.motion_tokenizer import DecodeState, MotionTokenizer
from a2llm_ros.model.configs import MotionTokenizerConfig

torch.set_num_threads(1)


def smooth_motion(batch: int, n_frames: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Sum of a few slow sinusoids per dimension: [B, T, D] at FLAME_FPS."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n_frames, dtype=torch.float32)[None, :, None] / FLAME_FPS  # [1, T, 1]
    out = torch.zeros(batch, n_frames, dim)
    for _ in range(3):
        freq = 0.2 + 1.8 * torch.rand(batch, 1, dim, generator=g)  # Hz
        phase = 2 * math.pi * torch.rand(batch, 1, dim, generator=g)
        amp = 0.5 * torch.rand(batch, 1, dim, generator=g)
        out += amp * torch.sin(2 * math.pi * freq * t + phase)
    return out


def tiny(**overrides) -> MotionTokenizer:
    torch.manual_seed(0)
    return MotionTokenizer(MotionTokenizerConfig.preset("tiny", **overrides))


def train(model, frames, steps, lr=3e-3):
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        _, losses = model(frames)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    model.eval()
    return history


def stream_decode(model, codes, chunks):
    """Decode codes [B, S, L] in consecutive chunks of the given segment counts."""
    state = model.init_decode_state(codes.shape[0])
    assert isinstance(state, DecodeState)
    out, s = [], 0
    for n in chunks:
        frames, state = model.decode_step(codes[:, s:s + n], state)
        assert frames.shape[1] == FRAMES_PER_SEGMENT * n
        out.append(frames)
        s += n
    assert s == codes.shape[1] and state.n_segments == s
    return torch.cat(out, dim=1)


def test_presets_and_sizes():
    for name in ("tiny", "edge", "paper"):
        cfg = MotionTokenizerConfig.preset(name)
        assert cfg.frame_dim == 58 and cfg.n_levels == 6 and cfg.codebook_size == 256
        assert cfg.frames_per_latent == FRAMES_PER_SEGMENT
    assert tiny().n_params() < 1_000_000
    assert MotionTokenizerConfig(n_expr=100).frame_dim == 108
    cfg = MotionTokenizerConfig.preset("edge")
    assert MotionTokenizerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigMismatchError):
        MotionTokenizerConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_encode_decode_shapes():
    model = tiny().eval()
    frames = smooth_motion(2, 40, 58)
    codes = model.encode(frames)
    assert codes.shape == (2, 8, 6) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 256
    assert model.codes_to_latent(codes).shape == (2, 8, model.cfg.latent_dim)
    assert model.decode(codes).shape == (2, 40, 58)
    with pytest.raises(ValueError):
        model.encode(smooth_motion(1, 42, 58))
    big = MotionTokenizer(MotionTokenizerConfig.preset("tiny", n_expr=100)).eval()
    assert big.decode(big.encode(smooth_motion(1, 10, 108))).shape == (1, 10, 108)


@pytest.mark.parametrize("trained", [False, True])
def test_chunked_decode_equals_whole(trained):
    model = tiny()
    frames = smooth_motion(3, 5 * 13, 58)
    if trained:
        train(model, frames, steps=5)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 256, (3, 13, 6), generator=gen)
    with torch.no_grad():
        whole = model.decode(codes)
        for chunks in ([1] * 13, [2, 3, 1, 4, 3], [13], [5, 8]):
            part = stream_decode(model, codes, chunks)
            assert torch.allclose(part, whole, atol=1e-5), chunks
        # prefixes decode identically too (causality of the decoder)
        for s in (1, 4, 9):
            assert torch.allclose(model.decode(codes[:, :s]), whole[:, :5 * s], atol=1e-5)


def test_normalization_round_trip_and_state_dict():
    model = tiny()
    frames = smooth_motion(4, 30, 58) * 3.0 + torch.linspace(-2, 2, 58)
    model.set_normalization_from_frames(frames.numpy())
    flat = frames.reshape(-1, 58)
    assert torch.allclose(model.norm_mean, flat.mean(0), atol=1e-4)
    assert torch.allclose(model.norm_std, flat.std(0), atol=1e-4)
    x = model.normalize(frames)
    assert abs(float(x.mean())) < 1e-4
    assert torch.allclose(model.denormalize(x), frames, atol=1e-5)
    # statistics and codebooks travel with the state_dict
    other = MotionTokenizer(model.cfg)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.norm_mean, model.norm_mean)
    assert torch.equal(other.norm_std, model.norm_std)
    # a zero-variance dimension is clamped, not divided by zero
    model.set_normalization(np.zeros(58), np.zeros(58))
    assert torch.isfinite(model.normalize(frames)).all()
    with pytest.raises(ValueError):
        model.set_normalization(np.zeros(57), np.ones(57))


def test_decode_returns_raw_frames():
    """With normalisation inside, decode output lives in the raw (shifted/scaled) space."""
    model = tiny().eval()
    codes = torch.randint(0, 256, (1, 4, 6))
    base = model.decode(codes)
    model.set_normalization(torch.full((58,), 10.0), torch.full((58,), 2.0))
    assert torch.allclose(model.decode(codes), base * 2.0 + 10.0, atol=1e-4)


def test_kmeans_init_and_ema_and_dead_code_reset():
    model = tiny(dead_code_steps=2, ema_decay=0.5)
    vq = model.quantizer
    frames = smooth_motion(4, 50, 58)
    model.train()
    with torch.no_grad():
        model(frames)  # first training batch: k-means init
    assert bool(vq.initialized)
    z = model.encode_latent(frames).detach().reshape(-1, model.cfg.latent_dim)  # [N, C]
    # after init, level-0 codes sit among the data: nearest code is close
    d0 = torch.cdist(z, vq.codebooks[0]).min(dim=1).values
    assert float(d0.mean()) < float(z.norm(dim=1).mean())

    # push most level-0 codes far away so they go unused; keep 8 near the data
    far = 1e3 * torch.ones_like(vq.codebooks[0])
    with torch.no_grad():
        vq.codebooks[0][8:] = far[8:]
        vq.ema_sum[0][8:] = far[8:] * vq.ema_size[0][8:, None]
        vq.unused_steps.zero_()
    kept = vq.codebooks[0][:8].clone()
    with torch.no_grad():
        model(frames)  # step 1: far codes unused once, not reset yet; EMA moves kept codes
    codes = model.encode(frames)
    assert int(codes[..., 0].max()) < 8
    assert (vq.codebooks[0][8:].abs().min(dim=1).values > 1e2).all()
    assert int(vq.unused_steps[0][8:].min()) == 1
    assert not torch.allclose(vq.codebooks[0][:8], kept)  # EMA update of used codes
    with torch.no_grad():
        model(frames)  # step 2: unused for dead_code_steps -> re-seeded from encoder outputs
    assert (vq.codebooks[0][8:].abs().max(dim=1).values < 1e2).all()
    assert vq.last_stats["reset"][0] >= 248
    z = model.encode_latent(frames).detach().reshape(-1, model.cfg.latent_dim)
    dist = torch.cdist(vq.codebooks[0][8:], z).min(dim=1).values
    assert float(dist.max()) < 1.0  # each reset code sits on (or next to) an encoder output


def test_overfit_smooth_signal():
    model = tiny()
    frames = smooth_motion(8, 50, 58, seed=3)
    model.set_normalization_from_frames(frames)
    history = train(model, frames, steps=120)
    first = np.mean([h["recon"] for h in history[:5]])
    last = np.mean([h["recon"] for h in history[-5:]])
    assert last < 0.3 * first, (first, last)
    with torch.no_grad():
        recon = model.decode(model.encode(frames))
    err = float(((recon - frames) ** 2).mean() / frames.var())
    assert err < 0.3, err


def test_safetensors_checkpoint_round_trip(tmp_path):
    model = tiny()
    frames = smooth_motion(2, 20, 58)
    model.set_normalization_from_frames(frames)
    train(model, frames, steps=2)
    path = tmp_path / "tok.safetensors"
    save_file(model.state_dict(), str(path))
    other = MotionTokenizer(MotionTokenizerConfig.from_dict(model.cfg.to_dict()))
    other.load_state_dict(load_file(str(path)))
    other.eval()
    assert bool(other.quantizer.initialized)
    codes = model.encode(frames)
    assert torch.equal(other.encode(frames), codes)
    assert torch.allclose(other.decode(codes), model.decode(codes))
    empty, state = model.decode_step(codes[:, :0], model.init_decode_state(2))
    assert empty.shape == (2, 0, 58) and state.n_segments == 0
