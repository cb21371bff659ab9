"""FLAME-QA writer/reader round trip and per-sample validation."""
import io
import json
import logging
import os
import tarfile

import numpy as np
import pytest
import soundfile as sf

from a2llm_ros.tools.data.flameqa import (FlameQAReader, FlameQASample, FlameQAWriter, list_ids,
                                          read_info, summarize)
from a2llm_ros.flame.layout import FRAME_DIM

SR = 16000


def make_sample(sample_id, split="train", seconds=0.8, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    n_frames = int(round(seconds * 25))
    fields = dict(
        id=sample_id, question_audio=(0.1 * rng.standard_normal(SR // 2)).astype(np.float32),
        question_text="How are you?",
        answer_audio=(0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32),
        answer_text="I am fine, thanks.",
        answer_flame=rng.standard_normal((n_frames, FRAME_DIM)).astype(np.float32),
        emotion="happy", question_voice="v1", answer_voice="robot", split=split,
        answer_id=3, answer_phonemes=[("a", 0.0, 0.1), ("m", 0.1, 0.2)])
    fields.update(overrides)
    return FlameQASample(**fields)


def test_round_trip(tmp_path):
    samples = [make_sample(f"s{i}", split="train" if i < 5 else "test", seed=i)
               for i in range(7)]
    with FlameQAWriter(str(tmp_path), shard_size=2, audio_subtype="FLOAT") as writer:
        for s in samples:
            writer.add(s)
    info = read_info(str(tmp_path))
    assert info["fps"] == 25 and info["sample_rate"] == SR
    assert info["flame_layout"]["dim"] == FRAME_DIM
    assert info["splits"]["train"]["n_samples"] == 5
    assert len(info["splits"]["train"]["shards"]) == 3
    assert info["splits"]["test"]["shards"] == ["shards/test-00000.tar"]
    reader = FlameQAReader(str(tmp_path))
    got = list(reader)
    assert [g.id for g in got] == [s.id for s in samples]
    for g, s in zip(got, samples):
        np.testing.assert_array_equal(g.answer_flame, s.answer_flame)
        np.testing.assert_array_equal(g.answer_audio, s.answer_audio)
        np.testing.assert_array_equal(g.question_audio, s.question_audio)
        assert (g.question_text, g.answer_text, g.emotion, g.split, g.answer_id) == \
            (s.question_text, s.answer_text, s.emotion, s.split, s.answer_id)
        assert g.answer_phonemes == s.answer_phonemes
    assert reader.rejected == [] and len(reader) == 7
    assert [s.id for s in FlameQAReader(str(tmp_path), split="test")] == ["s5", "s6"]
    assert list_ids(str(tmp_path), ["test"]) == ["s5", "s6"]


def test_pcm16_default_and_shuffle(tmp_path):
    samples = [make_sample(f"s{i}", seed=i) for i in range(6)]
    with FlameQAWriter(str(tmp_path), shard_size=2) as writer:
        for s in samples:
            writer.add(s)
    got = {g.id: g for g in FlameQAReader(str(tmp_path))}
    err = np.abs(got["s0"].answer_audio - samples[0].answer_audio).max()
    assert got["s0"].answer_audio.dtype == np.float32 and err < 1e-4
    a = [s.id for s in FlameQAReader(str(tmp_path), shuffle=True, seed=1, shuffle_buffer=3)]
    b = [s.id for s in FlameQAReader(str(tmp_path), shuffle=True, seed=1, shuffle_buffer=3)]
    assert a == b and sorted(a) == sorted(got) and a != sorted(got)


BAD_CASES = {
    "wrong_fps": dict(fps=30),
    "nonfinite_audio": dict(answer_audio=np.full(SR, np.nan, np.float32)),
    "nonfinite_flame": dict(answer_flame=np.full((20, FRAME_DIM), np.inf, np.float32)),
    "wrong_flame_width": dict(answer_flame=np.zeros((20, 56), np.float32)),
    "duration_mismatch": dict(answer_flame=np.zeros((30, FRAME_DIM), np.float32)),
    "empty_text": dict(answer_text="  "),
    "wrong_sample_rate": dict(sample_rate=22050),
}


def test_each_rule_rejects_and_run_continues(tmp_path, caplog):
    with FlameQAWriter(str(tmp_path), validate=False, audio_subtype="FLOAT") as writer:
        writer.add(make_sample("good0"))
        for reason, bad in BAD_CASES.items():
            writer.add(make_sample(f"bad_{reason}", **bad))
        writer.add(make_sample("good1", seed=1))
    reader = FlameQAReader(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        ids = [s.id for s in reader]
    assert ids == ["good0", "good1"]
    reasons = {sid: why.split(":")[0] for sid, why in reader.rejected}
    assert reasons == {f"bad_{r}": r for r in BAD_CASES}
    for reason in BAD_CASES:
        assert f"bad_{reason}" in caplog.text
    summary = summarize(str(tmp_path))
    assert summary["n_ok"] == 2 and len(summary["rejected"]) == len(BAD_CASES)
    # training reads the same shards: the good ones, and a count per named reason
    from a2llm_ros.tools.training.data import TrainData, rejected_counts
    data = TrainData(str(tmp_path))  # split "train"
    assert [s.id for s in data.samples] == ["good0", "good1"]
    assert rejected_counts(data.rejected) == {r: 1 for r in sorted(BAD_CASES)}


def test_writer_validates_by_default(tmp_path):
    with FlameQAWriter(str(tmp_path)) as writer:
        with pytest.raises(ValueError, match="empty_text"):
            writer.add(make_sample("x", question_text=""))
        with pytest.raises(ValueError, match="bad sample id"):
            writer.add(make_sample("a.b"))


def _rewrite_member(shard, name, data):
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, payload in members:
            payload = data if m.name == name else payload
            m.size = len(payload)
            tar.addfile(m, io.BytesIO(payload))


def test_wav_rate_mismatch_in_shard(tmp_path):
    with FlameQAWriter(str(tmp_path)) as writer:
        for i in range(3):
            writer.add(make_sample(f"s{i}", seed=i))
    shard = os.path.join(str(tmp_path), "shards", "train-00000.tar")
    buf = io.BytesIO()
    sf.write(buf, np.zeros(8000, np.float32), 8000, format="WAV")
    _rewrite_member(shard, "s1.question.wav", buf.getvalue())
    reader = FlameQAReader(str(tmp_path))
    assert [s.id for s in reader] == ["s0", "s2"]
    assert reader.rejected[0][0] == "s1"
    assert reader.rejected[0][1].startswith("wrong_sample_rate")
    meta = json.loads(open(os.path.join(str(tmp_path), "dataset.json")).read())
    assert meta["format"] == "flame-qa"


def test_train_prints_the_skipped_samples_per_reason(tmp_path, capsys):
    """`a2llm train` names what the reader skipped, with a count per reason (NaN FLAME,
    empty text, audio/FLAME length mismatch), before it starts (here: stops) training."""
    from a2llm_ros.tools.cli import main
    data = str(tmp_path / "data")
    bad = ("nonfinite_flame", "empty_text", "duration_mismatch")
    with FlameQAWriter(data, validate=False, audio_subtype="FLOAT") as writer:
        writer.add(make_sample("good0"))
        for reason in bad:
            writer.add(make_sample(f"bad_{reason}", **BAD_CASES[reason]))
        writer.add(make_sample("good1", seed=1))
    # `edge` without --init refuses to train after reading the data: no training runs
    assert main(["train", "--preset", "edge", "--data", data, "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 2
    out = capsys.readouterr().out
    assert (f"training data: 2 samples from {data} (3 skipped: duration_mismatch 1, "
            "empty_text 1, nonfinite_flame 1)") in out
