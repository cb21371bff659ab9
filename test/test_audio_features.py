"""Tests for the audio front-end (log-mel, filterbank, resampling) and WAV io."""
import warnings

import numpy as np
import pytest
import soundfile
import torch

from a2llm_ros.audio.features import (hz_to_mel, log_mel_spectrogram, mel_filterbank, mel_power,
                                      mel_power_from_log_mel, mel_to_hz, resample, to_mono)
from a2llm_ros.model.configs import MelConfig
from a2llm_ros.audio.io import read_wav, read_wav_with_rate, write_wav
from a2llm_ros.configbase import ConfigMismatchError
from a2llm_ros.constants import MEL_HOP, SAMPLE_RATE


def _sine(freq, seconds=1.0, rate=SAMPLE_RATE, amp=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_mel_scale_known_values_and_round_trip():
    assert hz_to_mel(1000.0) == pytest.approx(15.0)
    assert hz_to_mel(0.0) == pytest.approx(0.0)
    assert hz_to_mel(700.0, "htk") == pytest.approx(2595 * np.log10(2.0))
    hz = np.array([0.0, 200.0, 999.0, 1000.0, 4000.0, 8000.0])
    for scale in ("slaney", "htk"):
        np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz, scale), scale), hz, atol=1e-6)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filterbank_shape_and_normalisation(n_mels):
    cfg = MelConfig(n_mels=n_mels)
    fb = mel_filterbank(cfg)  # [M, F]
    assert fb.shape == (n_mels, 201) and fb.dtype == torch.float32
    assert (fb >= 0).all() and (fb.sum(1) > 0).all()
    # Slaney triangles have unit area in Hz: sum(weights) * bin_width ~= 1 for wide bands.
    area = fb.sum(1) * (SAMPLE_RATE / 2 / 200)
    error = area[n_mels // 2:].sub(1).abs()
    assert error.max() < 0.1 and error.mean() < 0.02
    # peaks move up in frequency
    peaks = fb.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all() and peaks[-1] > peaks[0]
    if n_mels > 80:  # HTK bands below ~500 Hz get narrower than a 40 Hz bin
        with pytest.warns(UserWarning, match="empty"):
            mel_filterbank(MelConfig(n_mels=n_mels, mel_scale="htk"))
        return
    htk = mel_filterbank(MelConfig(n_mels=n_mels, mel_scale="htk"))
    htk_peaks = htk.max(1).values  # [M]; narrow low bands miss their apex between bins
    assert htk_peaks.min() > 0 and htk.max() <= 1.0 and htk_peaks[n_mels // 2:].min() > 0.5


def _librosa_mel(librosa, cfg):
    """librosa's filters for ``cfg``: Slaney area-normalised, HTK peaking at 1 (as ours)."""
    slaney = cfg.mel_scale == "slaney"
    return librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels,
                               fmin=cfg.fmin, fmax=cfg.fmax, htk=not slaney,
                               norm="slaney" if slaney else None, dtype=np.float64)


@pytest.mark.parametrize("preset", ["tiny", "edge", "paper"])
@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
@pytest.mark.parametrize("band", [{}, {"fmin": 50.0, "fmax": 7600.0}])
def test_filterbank_matches_librosa(preset, mel_scale, band):
    """Golden test against ``librosa.filters.mel`` (where Whisper's and Step-Audio-2's
    filters come from) for every preset's parameters, full band and band-limited.
    Measured max |ours - librosa| / peak: 3.5e-8 (80 mels), 4.4e-8 (128 mels), i.e.
    float32 rounding of our float64 computation; the tolerance is 1e-6 of the peak."""
    librosa = pytest.importorskip("librosa", reason="librosa is in requirements.txt: `make env`")
    cfg = MelConfig.preset(preset, mel_scale=mel_scale, **band)
    with warnings.catch_warnings():  # both warn about HTK's empty low bands at 128 mels
        warnings.simplefilter("ignore", UserWarning)
        ours = mel_filterbank(cfg).numpy().astype(np.float64)  # [M, F]
        ref = _librosa_mel(librosa, cfg)  # [M, F]
    assert ours.shape == ref.shape == (cfg.n_mels, cfg.n_freqs)
    assert np.abs(ours - ref).max() <= 1e-6 * ref.max()


def test_log_mel_shapes_batch_and_frames():
    cfg = MelConfig()
    wave = _sine(440.0, 1.0)
    single = log_mel_spectrogram(wave, cfg)  # [M, T]
    assert single.shape == (80, len(wave) // MEL_HOP)
    batch = log_mel_spectrogram(np.stack([wave, wave[::-1].copy()]), cfg)  # [B, M, T]
    assert batch.shape == (2, 80, len(wave) // MEL_HOP)
    torch.testing.assert_close(batch[0], single)
    odd = log_mel_spectrogram(wave[:1234], cfg)
    assert odd.shape[-1] == 1234 // MEL_HOP


def test_log_mel_peak_at_tone_and_dynamic_range():
    cfg = MelConfig(n_mels=80)
    mel = log_mel_spectrogram(_sine(1000.0), cfg)  # [M, T]
    centres = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), 82))[1:-1]
    assert abs(centres[int(mel.mean(1).argmax())] - 1000.0) < 100.0
    # Whisper dynamic-range clamp: nothing more than 8 log10 units under the peak
    assert float(mel.max() - mel.min()) <= cfg.dynamic_range / cfg.scale + 1e-5
    silence = log_mel_spectrogram(np.zeros(16000, np.float32), cfg)
    assert torch.allclose(silence, torch.full_like(silence, (-10 + 4) / 4))


def test_log_mel_inverse_without_dynamic_range():
    cfg = MelConfig(dynamic_range=0.0, log_floor=1e-6)
    wave = torch.from_numpy(_sine(300.0) + _sine(2500.0, amp=0.1))
    power = mel_power(wave, cfg)  # [M, T]
    back = mel_power_from_log_mel(log_mel_spectrogram(wave, cfg), cfg)
    big = power > 1e-3
    torch.testing.assert_close(back[big], power[big], rtol=1e-3, atol=1e-6)


def test_mel_config_presets_and_strict_dicts():
    assert MelConfig.preset("paper").n_mels == 128
    assert MelConfig.preset("tiny").n_mels == 80
    cfg = MelConfig.preset("edge", fmax=7600.0)
    assert MelConfig.from_dict(cfg.to_dict()) == cfg
    bad = cfg.to_dict()
    bad["bogus"] = 1
    with pytest.raises(ConfigMismatchError, match="bogus"):
        MelConfig.from_dict(bad)
    with pytest.raises(ValueError):
        MelConfig(mel_scale="bark")


def _voice_like(seconds=1.0, seed=0):
    """Harmonics of a gliding 120-160 Hz pitch under a slow loudness envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(120 + 40 * t / seconds) / SAMPLE_RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 20))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (0.1 * wave * env + 0.001 * rng.standard_normal(t.size)).astype(np.float32)


def test_band_norm_zero_band_means_and_gain_invariance():
    cfg = MelConfig(band_norm=True)
    x = _voice_like()
    mel = log_mel_spectrogram(x, cfg)  # [M, T]
    assert mel.mean(dim=-1).abs().max() < 1e-5  # every frame is speech here
    assert torch.allclose(log_mel_spectrogram(0.2 * x, cfg), mel, atol=1e-4)
    plain = log_mel_spectrogram(x, MelConfig())
    assert not torch.allclose(plain, mel, atol=1e-2)  # off by default: Whisper's values
    assert MelConfig.preset("tiny").band_norm and not MelConfig.preset("paper").band_norm


def test_band_norm_ignores_silence_padding_and_batches_per_row():
    cfg = MelConfig(band_norm=True)
    x = _voice_like()
    pad = SAMPLE_RATE // 2
    alone = log_mel_spectrogram(x, cfg)  # [M, T]
    padded = log_mel_spectrogram(np.pad(x, (pad, pad)), cfg)  # [M, T + 100]
    off = pad // MEL_HOP
    inner = slice(3, alone.shape[1] - 3)  # the edge frames see the padding itself
    assert torch.allclose(padded[:, off:off + alone.shape[1]][:, inner], alone[:, inner],
                          atol=0.05)
    batch = log_mel_spectrogram(np.stack([x, 0.5 * _voice_like(seed=1)]), cfg)
    assert torch.allclose(batch[0], alone, atol=1e-5)


def test_resample_lengths_types_and_frequency():
    tone = _sine(1000.0, 1.0, rate=22050)
    out = resample(tone, 22050, 16000)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 1000.0) < 2.0
    batch = resample(torch.from_numpy(np.stack([tone, tone])), 22050, 16000)
    assert isinstance(batch, torch.Tensor) and batch.shape == (2, 16000)
    np.testing.assert_allclose(batch[0].numpy(), out, atol=1e-6)
    assert np.array_equal(resample(tone, 16000, 16000), tone)
    with pytest.raises(ValueError):
        resample(tone, 0, 16000)


def test_to_mono():
    stereo = np.stack([np.ones(10), -np.ones(10) * 0.5], axis=1)  # [N, C]
    np.testing.assert_allclose(to_mono(stereo), np.full(10, 0.25))
    assert to_mono(torch.ones(5, 2)).shape == (5,)
    assert to_mono(np.zeros(7)).shape == (7,)
    with pytest.raises(ValueError):
        to_mono(np.zeros((2, 3, 4)))


def test_wav_round_trip_and_resample_on_read(tmp_path):
    wave = _sine(440.0, 0.5)
    path = tmp_path / "a.wav"
    write_wav(path, wave)
    back = read_wav(path)
    assert back.dtype == np.float32 and back.shape == wave.shape
    assert np.abs(back - wave).max() < 1e-3
    other = tmp_path / "b.wav"
    soundfile.write(other, np.stack([_sine(440.0, 1.0, 22050)] * 2, axis=1), 22050)
    assert read_wav_with_rate(other)[1] == 22050
    assert read_wav(other).shape == (16000,)
    assert read_wav(other, sample_rate=None).shape == (22050,)
    with pytest.raises(ValueError, match="b.wav.*22050"):
        read_wav(other, resample=False)


def test_wav_errors_name_the_file(tmp_path):
    nan_path = tmp_path / "nan.wav"
    data = np.zeros(100, np.float32)
    data[10] = np.nan
    soundfile.write(nan_path, data, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav.*NaN"):
        read_wav(nan_path)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(ValueError, match="empty.wav.*empty"):
        read_wav(empty)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match="junk.wav"):
        read_wav(junk)
    with pytest.raises(FileNotFoundError):
        read_wav(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="out.wav"):
        write_wav(tmp_path / "out.wav", np.array([0.0, np.inf]))
    with pytest.raises(ValueError, match="out.wav"):
        write_wav(tmp_path / "out.wav", np.zeros(0))


def test_numpy_stft_matches_torch_stft():
    """Golden test of the NumPy STFT of ``audio.mel`` (the one log-mel definition, torch-free)
    against ``torch.stft`` with the same window, centring and reflect padding."""
    from a2llm_ros.audio import mel
    cfg = MelConfig()
    wave = np.random.default_rng(0).standard_normal((2, 12345)).astype(np.float32) * 0.1
    ours = mel.power_spectrogram(wave, cfg)  # [B, F, T]
    spec = torch.stft(torch.from_numpy(wave), cfg.n_fft, cfg.hop,
                      window=torch.hann_window(cfg.n_fft), center=True, pad_mode="reflect",
                      return_complex=True)[..., :-1]  # [B, F, T]
    ref = (spec.abs() ** 2).numpy()
    assert ours.shape == ref.shape == (2, cfg.n_freqs, 12345 // cfg.hop)
    assert np.abs(ours - ref).max() <= 1e-5 * ref.max()


@pytest.mark.parametrize("preset", ["tiny", "edge", "paper"])
def test_numpy_log_mel_equals_the_torch_log_mel(preset):
    """The NumPy log-mel (``audio.mel``: engine backends without torch) equals the torch one
    the model was trained with, for every preset (band_norm, Step's padding, 80/128 mels)."""
    from a2llm_ros.audio import mel
    cfg = MelConfig.preset(preset)
    waves = np.stack([_voice_like(1.3), 0.3 * _voice_like(1.3, seed=2)])  # [2, N]
    ours = mel.log_mel(waves, cfg)  # [2, M, T]
    ref = log_mel_spectrogram(waves, cfg).numpy()
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-4
    np.testing.assert_allclose(mel.log_mel(waves[1], cfg), ours[1], atol=1e-6)
