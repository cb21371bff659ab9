"""Importer of real assets: transcripts + audio + tracker FLAME outputs -> FLAME-QA."""
import json
import os

import numpy as np
import pytest
import soundfile as sf

from a2llm_ros.tools.cli import main
from a2llm_ros.tools.data.flameqa import FlameQAReader
from a2llm_ros.tools.data.importer import (import_assets, read_transcripts, resample_track)
from a2llm_ros.flame.layout import DEFAULT_LAYOUT as L

SECONDS = 2.0
TRACK_FPS = 30


def _write_audio(folder, sample_id, sr=16000):
    t = np.arange(int(SECONDS * sr)) / sr
    tone = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sf.write(os.path.join(folder, f"{sample_id}.question.wav"), tone[: sr], sr)
    sf.write(os.path.join(folder, f"{sample_id}.answer.wav"), tone, sr)


def _ramp(n_frames, fps, scale=1.0):
    return scale * np.arange(n_frames) / fps  # value == time (s) * scale


def _smirk_frames(folder, n_frames):
    """SMIRK-like per-frame files at 30 fps."""
    os.makedirs(folder)
    t = _ramp(n_frames, TRACK_FPS)
    for i in range(n_frames):
        expr = np.zeros(50)
        expr[0] = t[i]
        np.savez(os.path.join(folder, f"frame_{i + 1}.npz"), expression_params=expr[None],
                 jaw_params=np.array([[0.1 * t[i], 0, 0]]),
                 pose_params=np.array([[0, 0.05 * t[i], 0]]),
                 eyelid_params=np.array([[t[i] / SECONDS, t[i] / SECONDS]]),
                 cam=np.zeros((1, 3)))


def _emoca_npz(path, n_frames):
    """EMOCA-like per-sequence npz: 100 expression values, 6-D pose, fps inside."""
    t = _ramp(n_frames, TRACK_FPS)
    exp = np.zeros((n_frames, 100))
    exp[:, 0] = t
    exp[:, 60] = 9.0  # beyond n_expr: must be dropped
    pose = np.zeros((n_frames, 6))
    pose[:, 1] = 0.05 * t  # head yaw
    pose[:, 3] = 0.1 * t  # jaw open
    np.savez(path, exp=exp, pose=pose, fps=np.array(TRACK_FPS))


@pytest.fixture
def assets(tmp_path):
    audio, flame = tmp_path / "audio", tmp_path / "flame"
    audio.mkdir()
    flame.mkdir()
    n = int(SECONDS * TRACK_FPS)
    for sid in ("a1", "a2", "bad"):
        _write_audio(str(audio), sid, sr=22050 if sid == "a2" else 16000)
    _smirk_frames(str(flame / "a1"), n)
    _emoca_npz(str(flame / "a2.npz"), n)
    _emoca_npz(str(flame / "bad.npz"), n + 15)  # 0.5 s longer than the audio
    rows = [("a1", "How are you?", "Fine thanks.", "happy", "train"),
            ("a2", "Where is it?", "Over there.", "neutral", "test"),
            ("bad", "Why?", "Because.", "sad", "train")]
    tsv = tmp_path / "transcripts.tsv"
    tsv.write_text("id\tquestion_text\tanswer_text\temotion\tsplit\n"
                   + "".join("\t".join(r) + "\n" for r in rows))
    return tmp_path, str(audio), str(tsv), str(flame)


def test_resample_30_to_25_linear():
    frames = np.stack([_ramp(60, 30), np.full(60, 2.0)], axis=1)  # [60, 2]
    out = resample_track(frames, 30)
    assert out.shape == (50, 2)
    np.testing.assert_allclose(out[:, 0], np.arange(50) / 25, atol=1e-6)
    np.testing.assert_allclose(out[:, 1], 2.0)


def test_import_smirk_and_emoca(assets):
    root, audio, tsv, flame = assets
    out = str(root / "out")
    report = import_assets(audio, tsv, flame, out, fps=TRACK_FPS)
    assert report.n_imported == 2
    assert [s[0] for s in report.skipped] == ["bad"]
    assert report.skipped[0][1].startswith("duration_mismatch")
    assert report.missing_blocks == {"eyelids": 1}
    assert report.expression_resized == {"100->50": 1}
    reader = FlameQAReader(out)
    samples = {s.id: s for s in reader}
    assert reader.rejected == [] and set(samples) == {"a1", "a2"}
    times = np.arange(50) / 25
    for s in samples.values():
        assert s.answer_flame.shape == (50, 58) and s.fps == 25
        assert len(s.answer_audio) == 32000  # 22.05 kHz input resampled to 16 kHz
        np.testing.assert_allclose(s.answer_flame[:, 0], times, atol=1e-5)
        np.testing.assert_allclose(s.answer_flame[:, L.jaw.start], 0.1 * times, atol=1e-5)
        np.testing.assert_allclose(s.answer_flame[:, L.head.start + 1], 0.05 * times,
                                   atol=1e-5)
    a1, a2 = samples["a1"], samples["a2"]
    np.testing.assert_allclose(a1.answer_flame[:, L.eyelids.start], times / SECONDS, atol=1e-5)
    assert not a2.answer_flame[:, L.eyelids].any()
    assert not a2.answer_flame[:, 1:50].any()
    assert (a1.emotion, a1.split, a2.split) == ("happy", "train", "test")
    assert a1.answer_id != a2.answer_id


def test_transcripts_json_and_cli(assets, capsys):
    root, audio, tsv, flame = assets
    rows = read_transcripts(tsv)
    path = root / "t.json"
    path.write_text(json.dumps({"samples": rows[:2]}))
    assert [r["id"] for r in read_transcripts(str(path))] == ["a1", "a2"]
    out = str(root / "cli_out")
    assert main(["data", "import", "--audio-dir", audio, "--transcripts", str(path),
                 "--flame-dir", flame, "--out", out]) == 0
    assert main(["data", "check", out]) == 0
    text = capsys.readouterr().out
    assert "imported 2 samples" in text and "eyelids: missing in 1" in text
    assert "valid: 2, rejected: 0" in text
