"""Tests for the pluggable speech codec (k-means log-mel tokens + streaming Griffin-Lim)."""
import dataclasses
import shutil
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch

from a2llm_ros.audio.features import log_mel_spectrogram, resample
from a2llm_ros.audio.io import read_wav_with_rate
from a2llm_ros.configbase import ConfigMismatchError
from a2llm_ros.constants import SAMPLE_RATE, SAMPLES_PER_SPEECH_TOKEN
from a2llm_ros.model.codecs import codec_kinds, make_codec
from a2llm_ros.model.speech_codec import (CROSSFADE, OUTPUT_DELAY, GriffinLimState,
                                          SpeechTokenizer, Token2Wav, codec_state_dict,
                                          load_codec_state_dict, register_codec)
from a2llm_ros.model.configs import SpeechCodecConfig
from conftest import trained_refiner

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please turn on the lights in the kitchen.",
    "I would like a cup of coffee with milk.",
    "The weather today is sunny and warm.",
    "Can you tell me a story about a robot?",
    "We are going to the park this afternoon.",
    "Hello, how are you doing today?",
    "Thank you very much for your help.",
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _synthetic(seconds: float, seed: int) -> np.ndarray:
    """Speech-like test signal: gliding harmonic tones with pauses and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 60 * np.sin(2 * np.pi * rng.uniform(0.3, 2.0) * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 8))
    gate = (np.sin(2 * np.pi * rng.uniform(1.0, 3.0) * t) > -0.3).astype(float)
    wave = 0.2 * wave * gate + 0.01 * rng.standard_normal(t.shape)
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    tok, t2w = make_codec(SpeechCodecConfig.preset("tiny", kmeans_iters=10))
    tok.fit([_synthetic(6.0, s) for s in range(3)], seed=0)
    trained_refiner(SimpleNamespace(token2wav=t2w))
    return tok, t2w


def test_config_presets_and_validation():
    tiny = SpeechCodecConfig.preset("tiny")
    assert (tiny.kind, tiny.n_codes, tiny.n_mels, tiny.stack) == ("kmeans_mel", 256, 80, 4)
    assert tiny.chunk_tokens == 5 and tiny.griffin_lim_iters == 32
    for name in ("edge", "paper"):
        assert SpeechCodecConfig.preset(name).kind == "kmeans_mel"
    assert SpeechCodecConfig.from_dict(tiny.to_dict()) == tiny
    data = tiny.to_dict()
    del data["n_codes"]
    with pytest.raises(ConfigMismatchError, match="n_codes"):
        SpeechCodecConfig.from_dict(data)
    with pytest.raises(ValueError, match="stack"):
        SpeechCodecConfig(stack=3)
    with pytest.raises(KeyError, match="nope"):
        make_codec(SpeechCodecConfig(kind="nope"))


def test_token_count_is_floor_of_samples(fitted):
    tok, _ = fitted
    wave = _synthetic(2.0, 7)
    for n in (0, 639, 640, 641, 1279, 6400, 6401 + 320, len(wave)):
        codes = tok.encode(wave[:n])
        assert codes.dtype == torch.int64 and codes.shape == (n // SAMPLES_PER_SPEECH_TOKEN,)
        assert tok.n_tokens(n) == n // SAMPLES_PER_SPEECH_TOKEN
        if codes.numel():
            assert 0 <= int(codes.min()) and int(codes.max()) < 256
    # appending audio never changes earlier tokens (frames are causal enough)
    torch.testing.assert_close(tok.encode(wave[:6400])[:-1], tok.encode(wave)[:9])


def test_streaming_equals_batch_for_any_chunking(fitted):
    tok, t2w = fitted
    codes = tok.encode(_synthetic(1.4, 11))  # 35 tokens
    full = t2w.decode(codes)
    assert full.dtype == torch.float32 and full.shape == (codes.numel() * 640,)
    assert torch.isfinite(full).all() and full.abs().max() > 1e-3
    lookahead = t2w.lookahead_tokens
    assert lookahead == 1 and t2w.first_chunk_tokens == 2  # the tiny preset's refiner
    for size in (1, 2, 5, 7):
        state, parts, pushed = t2w.init_state(), [], 0
        for start in range(0, codes.numel(), size):
            piece = codes[start:start + size]
            audio, state = t2w.step(piece, state)
            # each token's audio comes out once the next token is known
            ready = max(0, pushed + piece.numel() - lookahead) - max(0, pushed - lookahead)
            assert audio.shape == (ready * SAMPLES_PER_SPEECH_TOKEN,)
            pushed += piece.numel()
            parts.append(audio)
        assert state.n_tokens == codes.numel() - lookahead
        rest, state = t2w.flush(state)
        assert rest.shape == (lookahead * SAMPLES_PER_SPEECH_TOKEN,)
        assert torch.equal(torch.cat(parts + [rest]), full), f"chunk size {size} differs"
        assert isinstance(state, GriffinLimState) and state.n_tokens == codes.numel()
    assert torch.equal(t2w.decode(codes, chunk_tokens=3), full)


def test_refiner_reads_its_window_and_starts_as_the_centroid_decode(fitted):
    tok, t2w = fitted
    codes = tok.encode(_synthetic(1.0, 3))  # 25 tokens
    plain_cfg = dataclasses.replace(t2w.cfg, refiner_hidden=0, refiner_context=0,
                                    lookahead_tokens=0)
    _, plain = make_codec(plain_cfg)
    plain.codebook.set_centroids(tok.codebook.centroids)
    assert plain.refiner is None and plain.lookahead_tokens == 0
    fresh_tok, fresh = make_codec(t2w.cfg)  # untrained refiner: exactly the centroids
    fresh.codebook.set_centroids(tok.codebook.centroids)
    assert torch.equal(fresh.decode(codes), plain.decode(codes))
    # the perturbed refiner: a token's spectrum depends on its neighbours
    windows = t2w.refiner.windows(codes)  # [n, 5]
    assert windows.shape == (codes.numel(), 5)
    assert windows[0, :3].tolist() == [t2w.refiner.pad] * 3
    assert windows[-1, 4].item() == t2w.refiner.pad
    changed = windows.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 256
    with torch.no_grad():
        a = t2w.refined_magnitudes(windows[3:4])
        b = t2w.refined_magnitudes(changed[3:4])
    assert not torch.allclose(a, b)
    assert not torch.equal(t2w.decode(codes), plain.decode(codes))
    # a turn shorter than the lookahead still yields its audio on flush
    state = t2w.init_state()
    nothing, state = t2w.step(codes[:1], state)
    rest, state = t2w.flush(state)
    assert nothing.numel() == 0 and rest.shape == (SAMPLES_PER_SPEECH_TOKEN,)
    assert torch.equal(rest, t2w.decode(codes[:1]))
    empty, _ = t2w.flush(t2w.init_state())
    assert empty.numel() == 0


def test_config_refuses_context_without_a_refiner():
    with pytest.raises(ValueError, match="refiner"):
        SpeechCodecConfig(lookahead_tokens=1)
    with pytest.raises(ValueError, match="refiner"):
        SpeechCodecConfig(refiner_context=2)
    assert SpeechCodecConfig.preset("tiny").refiner_hidden > 0
    assert SpeechCodecConfig.preset("edge").refiner_hidden == 0


def test_step_does_not_mutate_state_and_empty_step(fitted):
    _, t2w = fitted
    state = t2w.init_state()
    audio, s1 = t2w.step(torch.tensor([3, 4]), state)
    again, s2 = t2w.step(torch.tensor([3, 4]), state)  # branching from the same state
    assert torch.equal(audio, again) and torch.equal(s1.history, s2.history)
    assert state.n_tokens == 0 and not state.history.any()
    nothing, s3 = t2w.step(torch.zeros(0, dtype=torch.long), s1)
    assert nothing.shape == (0,) and s3 is s1
    with pytest.raises(ValueError, match="256"):
        t2w.step(torch.tensor([256]), state)
    with pytest.raises(ValueError):
        t2w.step(torch.tensor([1.5]), state)


def test_joins_do_not_click(fitted):
    tok, t2w = fitted
    audio = t2w.decode(tok.encode(_synthetic(3.0, 5))).numpy()
    curvature = np.abs(np.diff(audio, 2))  # [N - 2]
    joins = np.arange(SAMPLES_PER_SPEECH_TOKEN, audio.size - 2, SAMPLES_PER_SPEECH_TOKEN) - 1
    for offset in (0, CROSSFADE):  # the join itself and the end of the crossfade
        assert curvature[joins + offset].mean() < 1.5 * curvature.mean()


def test_fit_is_deterministic_and_seed_dependent():
    waves = [_synthetic(4.0, s) for s in (20, 21, 22)]
    cfg = SpeechCodecConfig(kmeans_iters=5)
    a, _ = make_codec(cfg)
    b, _ = make_codec(cfg)
    c, _ = make_codec(cfg)
    a.fit(waves, seed=3)
    b.fit(waves, seed=3)
    c.fit(waves, seed=4)
    assert torch.equal(a.state_dict()["centroids"], b.state_dict()["centroids"])
    assert not torch.equal(a.state_dict()["centroids"], c.state_dict()["centroids"])
    with pytest.raises(ValueError, match="at least 256"):
        make_codec(cfg)[0].fit([_synthetic(1.0, 0)])


def test_unfitted_codec_raises():
    tok, t2w = make_codec()
    assert not tok.is_fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        tok.encode(np.zeros(1280, np.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        t2w.decode(torch.tensor([1, 2]))


def test_state_dict_round_trip_through_safetensors(fitted, tmp_path):
    tok, t2w = fitted
    state = codec_state_dict(tok, t2w)
    refiner_keys = {"refiner." + k for k in t2w.refiner.state_dict()}
    assert set(state) == {"centroids", "mel_filters"} | refiner_keys
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    path = tmp_path / "codec.safetensors"
    safetensors.torch.save_file(state, str(path))
    tok2, t2w2 = make_codec(tok.cfg)
    load_codec_state_dict(tok2, t2w2, safetensors.torch.load_file(str(path)))
    wave = _synthetic(1.0, 9)
    codes = tok.encode(wave)
    assert torch.equal(tok2.encode(wave), codes)
    assert torch.equal(t2w2.decode(codes), t2w.decode(codes))
    other, _ = make_codec(dataclasses.replace(tok.cfg, n_mels=64))
    with pytest.raises(ValueError):
        other.load_state_dict(state)
    # a codec config with a refiner refuses weights without one, naming the key
    no_refiner = {k: v for k, v in state.items() if k not in refiner_keys}
    with pytest.raises(KeyError, match="refiner"):
        load_codec_state_dict(tok2, t2w2, no_refiner)
    wider = dict(state)
    wider["refiner.pad_vector"] = torch.zeros(7)
    with pytest.raises(ValueError, match="refiner.pad_vector"):
        load_codec_state_dict(tok2, t2w2, wider)


def test_registry_accepts_other_codecs():
    class Silent(Token2Wav):
        def init_state(self):
            return 0

        def step(self, tokens, state):
            return torch.zeros(len(tokens) * SAMPLES_PER_SPEECH_TOKEN), state + len(tokens)

    class Constant(SpeechTokenizer):
        def encode(self, wave):
            return torch.zeros(len(wave) // SAMPLES_PER_SPEECH_TOKEN, dtype=torch.long)

    register_codec("test_silent")(lambda cfg: (Constant(cfg), Silent(cfg)))
    assert "test_silent" in codec_kinds() and "kmeans_mel" in codec_kinds()
    tok, t2w = make_codec(SpeechCodecConfig(kind="test_silent"))
    assert t2w.decode(tok.encode(np.zeros(3000))).shape == (4 * 640,)


# ----------------------------------------------------------------------------- espeak quality

def _espeak(text: str, path) -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True,
                   capture_output=True, timeout=30)
    wave, rate = read_wav_with_rate(path)
    return resample(wave, rate, SAMPLE_RATE)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_quality_and_speed_on_espeak_speech(tmp_path):
    waves = [_espeak(s, tmp_path / f"s{i}.wav") for i, s in enumerate(SENTENCES)]
    tok, t2w = make_codec(SpeechCodecConfig.preset("tiny"))
    tok.fit(waves[:6], seed=0)
    mel_cfg = tok.cfg.mel_config()

    def decode_aligned(wave):
        """Decode and undo the decoder's 10 ms lag -> (original, decoded, s per chunk)."""
        codes = tok.encode(wave)
        timings = []
        for _ in range(2):  # best of two: the machine is shared
            started = time.perf_counter()
            out = t2w.decode(codes).numpy()
            timings.append((time.perf_counter() - started) / (codes.numel() / 5))
        n = out.size - OUTPUT_DELAY
        return wave[:n], out[OUTPUT_DELAY:], min(timings)

    def distance(a, b):
        n = min(a.size, b.size)
        la, lb = (log_mel_spectrogram(x[:n], mel_cfg) for x in (a, b))
        return float((la - lb).abs().mean())

    original, decoded, per_chunk = decode_aligned(waves[6])
    other = decode_aligned(waves[7])[1]
    d_self = distance(original, decoded)
    d_other = distance(original, other)
    d_silence = distance(original, np.zeros_like(original))
    print(f"log-mel L1: decoded {d_self:.3f}, other sentence {d_other:.3f}, "
          f"silence {d_silence:.3f}; decode {1000 * per_chunk:.1f} ms per 200 ms chunk")
    assert d_self < 0.4 * d_other
    assert d_self < 0.3 * d_silence
    # the waveform decoder adds little on top of the codebook's own quantisation error
    codes = tok.encode(waves[6])
    quantised = tok.codebook.centroids[codes].reshape(-1, mel_cfg.n_mels).T  # [M, 4 n]
    exact = log_mel_spectrogram(waves[6], mel_cfg)[:, :quantised.shape[1]]
    d_quant = float((quantised - exact).abs().mean())
    print(f"codebook quantisation alone: {d_quant:.3f}")
    assert d_self < 1.5 * d_quant
    # well below real time on one thread (200 ms of audio per chunk)
    assert per_chunk < 0.1
