"""Question-audio augmentation of training: WSOLA stretch, the frequency warp and the inner
pause."""
import numpy as np
import pytest

from a2llm_ros.constants import SAMPLE_RATE
from a2llm_ros.tools.training.config import AugmentConfig
from a2llm_ros.tools.training.data import (augment_wave, frequency_warp, insert_pause,
                                           pause_spot, wsola_stretch)


def _tones(freqs, seconds=1.0):
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return sum(0.2 * np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32)


def _peaks(wave, n):
    """The ``n`` strongest spectral peaks (Hz), sorted."""
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    freqs = np.fft.rfftfreq(len(wave), 1.0 / SAMPLE_RATE)
    found = []
    for i in np.argsort(spec)[::-1]:
        if all(abs(freqs[i] - f) > 30 for f in found):
            found.append(freqs[i])
        if len(found) == n:
            break
    return sorted(found)


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x))))


@pytest.mark.parametrize("rate", [0.8, 1.25])
def test_wsola_changes_duration_not_pitch(rate):
    wave = _tones([220.0, 1300.0])
    out = wsola_stretch(wave, rate)
    assert len(out) == round(len(wave) / rate)
    assert _peaks(out, 2) == pytest.approx([220.0, 1300.0], abs=8.0)
    middle = out[SAMPLE_RATE // 10:-SAMPLE_RATE // 10]
    assert _rms(middle) == pytest.approx(_rms(wave), rel=0.1)


@pytest.mark.parametrize("alpha", [0.87, 1.13])
def test_frequency_warp_scales_every_frequency_and_keeps_duration(alpha):
    wave = _tones([200.0, 1000.0, 2500.0])
    out = frequency_warp(wave, alpha)
    assert out.shape == wave.shape and out.dtype == np.float32
    want = [200.0 * alpha, 1000.0 * alpha, 2500.0 * alpha]
    assert _peaks(out, 3) == pytest.approx(want, rel=0.01)
    middle = slice(SAMPLE_RATE // 10, -SAMPLE_RATE // 10)
    assert _rms(out[middle]) == pytest.approx(_rms(wave[middle]), rel=0.15)


def test_frequency_warp_of_one_is_identity_and_short_input_passes_through():
    wave = _tones([440.0])
    assert np.array_equal(frequency_warp(wave, 1.0), wave)
    short = wave[:100]
    assert np.array_equal(frequency_warp(short, 1.1), short)


def test_warp_keeps_speech_timing():
    """A burst keeps its place in time: the warp must not shift the envelope."""
    wave = np.zeros(SAMPLE_RATE, np.float32)
    burst = _tones([300.0, 900.0], seconds=0.2)
    wave[6000:6000 + len(burst)] = burst
    out = frequency_warp(wave, 1.12)
    env = np.abs(out) > 0.05
    start, end = np.flatnonzero(env)[[0, -1]]
    assert abs(start - 6000) < 0.02 * SAMPLE_RATE
    assert abs(end - (6000 + len(burst))) < 0.02 * SAMPLE_RATE


def test_augment_is_deterministic_per_rng_and_warp_draws_only_when_enabled():
    wave = _tones([250.0, 700.0])
    on = AugmentConfig(prob=1.0, warp_prob=1.0, noise_prob=0.0)
    a = augment_wave(wave, np.random.default_rng(3), on)
    b = augment_wave(wave, np.random.default_rng(3), on)
    assert np.array_equal(a, b)
    # warp_prob = 0 draws nothing extra: the random stream is that of the recipe without a warp
    off = AugmentConfig(prob=1.0, warp_prob=0.0, noise_prob=0.0)
    rng = np.random.default_rng(5)
    augment_wave(wave, rng, off)
    ref = np.random.default_rng(5)
    ref.random(), ref.uniform(), ref.uniform(), ref.random(), ref.uniform(), ref.uniform()
    assert rng.random() == ref.random()


@pytest.mark.parametrize("kwargs", [dict(warp_prob=1.5), dict(warp_min=0.0),
                                    dict(warp_min=1.2, warp_max=1.1)])
def test_augment_config_rejects_bad_warp(kwargs):
    with pytest.raises(ValueError, match="warp"):
        AugmentConfig(**kwargs)


def _words(gaps_at=(0.45, 0.95), seconds=1.6, lead=0.2):
    """Tone 'words' from ``lead`` to ``seconds`` - ``lead``, with 40 ms gaps at ``gaps_at``."""
    wave = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    speech = slice(int(lead * SAMPLE_RATE), int((seconds - lead) * SAMPLE_RATE))
    wave[speech] = _tones([180.0, 900.0], seconds)[speech]
    for t in gaps_at:
        k = int(t * SAMPLE_RATE)
        wave[k - 320:k + 320] = 0.0
    return wave


def test_pause_goes_into_a_gap_inside_the_speech():
    wave = _words()
    for seed in range(6):
        spot = pause_spot(wave, np.random.default_rng(seed))
        assert min(abs(spot / SAMPLE_RATE - t) for t in (0.45, 0.95)) < 0.03
    cfg = AugmentConfig(pause_min_s=0.3, pause_max_s=0.3)
    out = insert_pause(wave, np.random.default_rng(1), cfg)
    assert len(out) == len(wave) + int(0.3 * SAMPLE_RATE)
    speech = np.flatnonzero(np.abs(out) > 0)
    inner = np.abs(out[speech[0]:speech[-1]]) > 0          # speech span: True where voiced
    edges = np.flatnonzero(np.diff(np.r_[1, inner.astype(np.int8), 1]))  # starts/ends of gaps
    gaps = edges[1::2] - edges[::2]
    assert gaps.max() == int(0.3 * SAMPLE_RATE) + 640      # the pause joined a 40 ms gap
    # the speech itself is kept, in order
    assert np.array_equal(out[np.abs(out) > 0], wave[np.abs(wave) > 0])


def test_pause_is_not_put_at_the_edges_and_short_waves_pass():
    edge_gaps = _words(gaps_at=(0.25, 1.35))              # gaps only near the ends
    spot = pause_spot(edge_gaps, np.random.default_rng(0))
    speech = np.flatnonzero(np.abs(edge_gaps) > 0)
    rel = (spot - speech[0]) / (speech[-1] - speech[0])
    assert 0.2 <= rel <= 0.9
    short = _tones([300.0], seconds=0.05)
    assert pause_spot(short, np.random.default_rng(0)) is None
    assert pause_spot(np.zeros(SAMPLE_RATE, np.float32), np.random.default_rng(0)) is None
    assert np.array_equal(insert_pause(short, np.random.default_rng(0), AugmentConfig()), short)


def test_pause_prob_zero_draws_nothing_and_one_always_pauses():
    wave = _words()
    base = dict(prob=1.0, noise_prob=0.0, pad_max_s=0.0, speed_min=1.0, speed_max=1.0,
                gain_db=0.0)
    rng = np.random.default_rng(5)
    augment_wave(wave, rng, AugmentConfig(pause_prob=0.0, **base))
    ref = np.random.default_rng(5)
    ref.random(), ref.uniform(), ref.uniform(), ref.random(), ref.uniform(), ref.uniform()
    assert rng.random() == ref.random()
    cfg = AugmentConfig(pause_prob=1.0, pause_min_s=0.5, pause_max_s=0.5, **base)
    out = augment_wave(wave, np.random.default_rng(5), cfg)
    assert len(out) == len(wave) + int(0.5 * SAMPLE_RATE)


@pytest.mark.parametrize("kwargs", [dict(pause_prob=-0.1), dict(pause_min_s=-1.0),
                                    dict(pause_min_s=0.8, pause_max_s=0.5)])
def test_augment_config_rejects_bad_pause(kwargs):
    with pytest.raises(ValueError, match="pause"):
        AugmentConfig(**kwargs)
