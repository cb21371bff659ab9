"""Tests of the Motion Connector (shapes, causality, streaming == batch, sampling, training)."""
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from a2llm_ros.constants import SPEECH_TOKENS_PER_SEGMENT as P
from a2llm_ros.model.connector import ConnectorState, MotionConnector
from a2llm_ros.model.configs import ConnectorConfig

torch.set_num_threads(1)
L, K = 6, 256


def tiny(**overrides) -> MotionConnector:
    torch.manual_seed(0)
    return MotionConnector(ConnectorConfig.preset("tiny", **overrides)).eval()


def inputs(batch, segments, hidden=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, P * segments, hidden, generator=g)  # [B, 5S, H]
    codes = torch.randint(0, K, (batch, segments, L), generator=g)  # [B, S, L]
    return h, codes


def stream_logits(model, hidden):
    """Run step() over hidden [B, 5S, H]; return codes [B, S, L] and logits [B, S, L, K]."""
    state = model.init_state(hidden.shape[0])
    codes, logits = [], []
    for s in range(hidden.shape[1] // P):
        c, state = model.step(hidden[:, s * P:(s + 1) * P], state)
        codes.append(c)
        logits.append(state.logits)
    assert isinstance(state, ConnectorState) and state.n_segments == len(codes)
    return torch.stack(codes, 1), torch.stack(logits, 1)


def test_presets():
    for name, hidden in (("tiny", 64), ("edge", 896), ("paper", 3584)):
        cfg = ConnectorConfig.preset(name)
        assert cfg.llm_hidden == hidden and cfg.n_levels == L and cfg.codebook_size == K
        assert cfg.pool == P
        assert ConnectorConfig.from_dict(cfg.to_dict()) == cfg
    assert ConnectorConfig.preset("paper").n_layers == 6
    assert ConnectorConfig.preset("tiny").n_layers == 2
    assert tiny().n_params() < 1_000_000


def test_forward_shapes_and_loss():
    model = tiny()
    h, codes = inputs(2, 7)
    logits = model(h, codes)
    assert logits.shape == (2, 7, L, K)
    total, per_level = model.loss(logits, codes)
    assert len(per_level) == L
    assert torch.allclose(total, torch.stack(per_level).mean())
    assert abs(float(total.detach()) - math.log(K)) < 1.0  # near uniform at init
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    masked, _ = model.loss(logits, codes, mask)
    ref, _ = model.loss(torch.cat([logits[0], logits[1, :4]])[None],
                        torch.cat([codes[0], codes[1, :4]])[None])
    assert torch.allclose(masked, ref, atol=1e-6)
    with pytest.raises(ValueError):
        model(h[:, :-1], codes)


@pytest.mark.parametrize("coarse_to_fine", [True, False])
def test_causality(coarse_to_fine):
    model = tiny(max_segments=4, coarse_to_fine=coarse_to_fine)
    h, codes = inputs(2, 9)
    base = model(h, codes)
    cut = 5
    h2 = h.clone()
    h2[:, P * cut:] = torch.randn_like(h2[:, P * cut:])
    codes2 = codes.clone()
    codes2[:, cut:] = torch.randint(0, K, codes2[:, cut:].shape)
    out = model(h2, codes2)
    assert torch.allclose(out[:, :cut], base[:, :cut], atol=1e-6)
    assert not torch.allclose(out[:, cut:], base[:, cut:], atol=1e-3)
    # codes of segment `cut` first matter at segment cut + 1 (memory), not at `cut` itself
    codes3 = codes.clone()
    codes3[:, cut, 0] = (codes3[:, cut, 0] + 1) % K
    out3 = model(h, codes3)
    assert torch.allclose(out3[:, cut, 0], base[:, cut, 0], atol=1e-6)
    assert not torch.allclose(out3[:, cut + 1], base[:, cut + 1], atol=1e-4)
    # coarse-to-fine: level 0 of segment `cut` steers the finer levels of the same segment
    assert torch.allclose(out3[:, cut, 1], base[:, cut, 1], atol=1e-6) != coarse_to_fine
    # prefix input gives the same logits as the full input (no look-ahead through padding)
    assert torch.allclose(model(h[:, :P * cut], codes[:, :cut]), base[:, :cut], atol=1e-5)


@pytest.mark.parametrize("window", [3, 32])
def test_generate_equals_steps_and_forward(window):
    """Greedy generate() == step() loop, and forward() on the step's codes gives its logits."""
    model = tiny(max_segments=window)
    h, _ = inputs(3, 10, seed=1)
    with torch.no_grad():
        generated = model.generate(h)
        codes, step_logits = stream_logits(model, h)
        forward_logits = model(h, codes)
    assert generated.shape == (3, 10, L) and generated.dtype == torch.long
    assert torch.equal(generated, codes)
    assert torch.allclose(forward_logits, step_logits, atol=1e-5)
    assert torch.equal(forward_logits.argmax(-1), codes)


def test_window_bounds_state():
    model = tiny(max_segments=3)
    h, _ = inputs(1, 8)
    state = model.init_state(1)
    for s in range(8):
        _, state = model.step(h[:, s * P:(s + 1) * P], state)
    assert all(k.shape[2] == 3 for k in state.self_k + state.mem_k)


def test_seeded_sampling_reproducible():
    model = tiny()
    h, _ = inputs(2, 6)
    a = model.generate(h, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = model.generate(h, temperature=1.0, generator=torch.Generator().manual_seed(7))
    c = model.generate(h, temperature=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, model.generate(h))  # sampling at T=1 differs from greedy
    k1 = model.generate(h, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(k1, model.generate(h))  # top-1 sampling is greedy


def test_overfit_mapping():
    """CE falls when learning a fixed map from random hidden states to codes."""
    model = tiny()
    model.train()
    h, codes = inputs(4, 10, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        total, _ = model.loss(model(h, codes), codes)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    model.eval()
    with torch.no_grad():
        acc = (model.generate(h) == codes).float().mean()
    assert float(acc) > 0.8, float(acc)


def test_safetensors_round_trip(tmp_path):
    model = tiny()
    path = tmp_path / "connector.safetensors"
    save_file(model.state_dict(), str(path))
    other = MotionConnector(ConnectorConfig.from_dict(model.cfg.to_dict())).eval()
    other.load_state_dict(load_file(str(path)))
    h, codes = inputs(1, 4)
    assert torch.equal(other(h, codes), model(h, codes))
    with pytest.raises(ValueError):
        model.step(h[:, :2 * P], model.init_state(1))
