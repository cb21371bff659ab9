"""Tests for the streaming VAD backends and the end-pointing state machine."""
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import soundfile

from a2llm_ros.audio.frontend import StreamingResampler
from a2llm_ros.constants import SAMPLE_RATE
from a2llm_ros.conversation import vad as vad_mod
from a2llm_ros.conversation.turns import Activity, SpeechStart, TurnDetector, UtteranceEnd
from a2llm_ros.conversation.vad import (CHUNK_SAMPLES, EnergyBackend, SileroOnnxBackend,
                                        StreamingVad, VadConfig, make_backend)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="no espeak-ng")


def _espeak(text, tmp_dir):
    path = os.path.join(tmp_dir, "speech.wav")
    subprocess.run(["espeak-ng", "-s", "160", "-w", path, text], check=True,
                   capture_output=True)
    wave, rate = soundfile.read(path, dtype="float32")
    r = StreamingResampler(rate)
    return np.concatenate([r.process(wave), r.flush()])


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    return _espeak("Hello there, how are you doing today?", str(tmp_path_factory.mktemp("e")))


def _silence(seconds):
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


class AmplitudeBackend:
    """Test backend: prob 1 when the chunk peak exceeds 0.5."""

    name = "amp"

    def reset(self):
        pass

    def __call__(self, chunk):
        return 1.0 if np.abs(chunk).max() > 0.5 else 0.0


def _block(seconds, level):
    return np.full(int(seconds * SAMPLE_RATE), level, np.float32)


def _run(detector, audio, chunk=777):
    events = []
    for i in range(0, len(audio), chunk):
        events += detector.process(audio[i:i + chunk])
    return events


def _non_activity(events):
    return [e for e in events if not isinstance(e, Activity)]


def test_silero_onnx_probabilities(speech):
    backend = SileroOnnxBackend()
    vad = StreamingVad(VadConfig(), backend)
    audio = np.concatenate([_silence(1.0), speech, _silence(1.0)])
    frames = vad.process(audio)
    assert len(frames) == len(audio) // CHUNK_SAMPLES
    assert [f.start_sample for f in frames[:3]] == [0, 512, 1024]
    probs = np.array([f.prob for f in frames])
    n_sil = SAMPLE_RATE // CHUNK_SAMPLES
    assert probs[:n_sil - 2].max() < 0.2
    inner = probs[n_sil + 5:n_sil + len(speech) // CHUNK_SAMPLES - 5]
    assert np.mean(inner > 0.5) > 0.6


def test_silero_ignores_pure_tone():
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    det = TurnDetector(VadConfig(backend="silero"))
    assert _non_activity(_run(det, tone)) == []


def test_energy_backend_levels():
    backend = EnergyBackend()
    quiet = [backend(np.full(512, 1e-3, np.float32)) for _ in range(20)]
    loud = backend(np.full(512, 0.3, np.float32) * np.sign(np.random.randn(512)))
    assert max(quiet) < 0.1 and loud > 0.9


def test_auto_falls_back_to_energy(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no onnxruntime")
    monkeypatch.setattr(vad_mod, "SileroOnnxBackend", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = make_backend(VadConfig(backend="auto"))
    assert isinstance(backend, EnergyBackend)
    assert any("energy" in str(w.message) for w in caught)
    with pytest.raises(RuntimeError):
        make_backend(VadConfig(backend="silero"))


def test_vad_config_validation():
    with pytest.raises(ValueError):
        VadConfig(backend="webrtc")
    with pytest.raises(ValueError):
        VadConfig(threshold=1.5)
    assert VadConfig.preset("edge").min_silence_ms == 600.0


@pytest.mark.parametrize("snr_db", [None, 15.0])
@pytest.mark.parametrize("backend", ["silero", "energy"])
def test_end_pointing_on_speech(speech, backend, snr_db):
    audio = np.concatenate([_silence(1.0), speech, _silence(1.5), speech, _silence(1.5)])
    if snr_db is not None:
        power = np.mean(speech ** 2)
        noise = np.random.default_rng(0).standard_normal(len(audio)) * \
            np.sqrt(power / 10 ** (snr_db / 10))
        audio = (audio + noise).astype(np.float32)
    det = TurnDetector(VadConfig(backend=backend))
    events = _non_activity(_run(det, audio))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SpeechStart", "UtteranceEnd"] * 2, kinds
    onsets = [SAMPLE_RATE, SAMPLE_RATE + len(speech) + int(1.5 * SAMPLE_RATE)]
    for (start, end), onset in zip(zip(events[::2], events[1::2]), onsets):
        assert abs(start.sample - onset) < 0.35 * SAMPLE_RATE
        assert end.start_sample <= start.sample - int(0.15 * SAMPLE_RATE)  # pre-roll
        assert abs(end.end_sample - (onset + len(speech))) < 0.4 * SAMPLE_RATE
        assert len(end.segment) == end.end_sample - end.start_sample
        assert not end.forced
        np.testing.assert_array_equal(end.segment, audio[end.start_sample:end.end_sample])


def test_blips_ignored_and_short_gaps_bridged():
    cfg = VadConfig(min_speech_ms=250, min_silence_ms=600, speech_pad_ms=200)
    det = TurnDetector(cfg, StreamingVad(cfg, AmplitudeBackend()))
    audio = np.concatenate([_silence(1.0), _block(0.1, 0.9), _silence(1.0),   # blip
                            _block(0.5, 0.9), _silence(0.3), _block(0.5, 0.9),  # gap
                            _silence(1.0)])
    events = _non_activity(_run(det, audio, chunk=1000))
    assert [type(e) for e in events] == [SpeechStart, UtteranceEnd]
    onset = int(2.1 * SAMPLE_RATE)
    assert abs(events[0].sample - onset) <= CHUNK_SAMPLES
    end = events[1]
    assert abs(end.start_sample - (onset - int(0.2 * SAMPLE_RATE))) <= CHUNK_SAMPLES
    assert abs(end.end_sample - int(3.6 * SAMPLE_RATE)) <= CHUNK_SAMPLES
    assert np.abs(end.segment).max() == pytest.approx(0.9)


@pytest.mark.parametrize("bridge_ms", [0.0, 96.0])
def test_onset_bridge_keeps_a_short_first_word(bridge_ms):
    """A first word voiced for less than min_speech_ms, then 64 ms the VAD calls silence,
    then the rest: with onset_bridge_ms the utterance starts at the word (its samples are
    in the segment), without it at the rest (the pre-roll holds a bit of the word).  A
    blip a second before the speech is too far to bridge either way."""
    cfg = VadConfig(min_speech_ms=250, min_silence_ms=600, speech_pad_ms=96,
                    onset_bridge_ms=bridge_ms)
    det = TurnDetector(cfg, StreamingVad(cfg, AmplitudeBackend()))
    word, rest = 0.096, 0.6  # s: three voiced decisions, then the rest of the question
    audio = np.concatenate([_silence(0.512), _block(0.064, 0.7), _silence(1.024),  # far blip
                            _block(word, 0.8), _silence(0.064),  # the first word, lost
                            _block(rest, 0.9), _silence(1.0)])
    events = _non_activity(_run(det, audio, chunk=400))
    assert [type(e) for e in events] == [SpeechStart, UtteranceEnd]
    word_at = int((0.512 + 0.064 + 1.024) * SAMPLE_RATE)
    rest_at = word_at + int((word + 0.064) * SAMPLE_RATE)
    onset = word_at if bridge_ms else rest_at
    assert events[0].sample == onset
    end = events[1]
    assert end.start_sample == onset - int(0.096 * SAMPLE_RATE)
    kept = int((np.abs(end.segment) == np.float32(0.8)).sum())  # samples of the word
    word_samples = int(word * SAMPLE_RATE)
    assert kept == word_samples if bridge_ms else kept < word_samples // 2  # pre-roll only
    assert not (np.abs(end.segment) == np.float32(0.7)).any()  # the far blip stays out


def test_onset_bridge_does_not_hold_audio_in_long_silence():
    cfg = VadConfig(onset_bridge_ms=96.0)
    det = TurnDetector(cfg, StreamingVad(cfg, AmplitudeBackend()))
    _run(det, np.concatenate([_block(0.064, 0.9), _silence(5.0)]))
    assert det.buffered_samples < SAMPLE_RATE  # the blip's audio is let go


def test_forced_end_at_max_utterance():
    cfg = VadConfig(max_utterance_s=2.0)
    det = TurnDetector(cfg, StreamingVad(cfg, AmplitudeBackend()))
    events = _non_activity(_run(det, np.concatenate([_block(5.0, 0.9), _silence(1.0)])))
    ends = [e for e in events if isinstance(e, UtteranceEnd)]
    assert ends[0].forced and abs(len(ends[0].segment) - 2 * SAMPLE_RATE) <= CHUNK_SAMPLES
    assert len(ends) == 3 and not ends[-1].forced
    assert det.buffered_samples < SAMPLE_RATE  # nothing accumulates after the ends
