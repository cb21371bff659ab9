"""Fixture bags: content, timing, determinism, WAV export equality, malformed handling."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import soundfile

from a2llm_ros.tools.bags import types as T
from a2llm_ros.tools.bags.export import export_audio, to_int16
from a2llm_ros.tools.bags.fixtures import (DEFAULT_FIXTURES, Q1, T0_NS, fixture_audio,
                                           make_fixture, make_fixtures, speak)
from a2llm_ros.tools.bags.io import read_bag, read_metadata

NS = 1_000_000_000


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixtures")
    make_fixtures(out, seed=0)
    return out


def _sidecar(fixture_dir, name):
    return json.loads((fixture_dir / f"{name}.json").read_text())


def test_fixture_set_written_small_and_described(fixture_dir):
    summary = json.loads((fixture_dir / "fixtures.json").read_text())
    assert summary["fixtures"] == sorted(DEFAULT_FIXTURES)
    assert summary["bytes"] < 5_000_000
    for name in DEFAULT_FIXTURES:
        meta = _sidecar(fixture_dir, name)
        assert (fixture_dir / name / "metadata.yaml").exists()
        assert read_metadata(fixture_dir / name)["storage_identifier"] == "mcap"
        assert 20.0 <= meta["chunk_ms"] <= 32.0
        assert meta["utterances"] and meta["t0_ns"] == T0_NS
        for utt in meta["utterances"]:
            assert 0 < utt["onset_s"] < utt["offset_s"] < meta["duration_s"]
            assert utt["text"].endswith(("?", "."))
    conv = _sidecar(fixture_dir, "conversation")
    q1, q2 = conv["utterances"]
    assert q2["onset_s"] - q1["offset_s"] == pytest.approx(2.5, abs=1e-3)
    assert conv["duration_s"] - q2["offset_s"] == pytest.approx(2.0, abs=1e-3)
    assert q1["answer_id"] >= 0 and q2["answer_id"] >= 0  # taken from the Q/A set
    barge = _sidecar(fixture_dir, "barge_in")
    assert barge["utterances"][1]["role"] == "barge_in"
    assert barge["utterances"][1]["onset_s"] - barge["utterances"][0]["offset_s"] == \
        pytest.approx(1.2, abs=1e-3)


def test_stamps_advance_in_real_time_and_info_latched_first(fixture_dir):
    meta = _sidecar(fixture_dir, "conversation")
    records = list(read_bag(fixture_dir / "conversation"))
    assert records[0][1] == T.AUDIO_INFO and records[0][2] == T0_NS
    assert sum(r[1] == T.AUDIO_INFO for r in records) == 1
    audio = [r for r in records if r[0] == meta["audio_topic"]]
    stamps = np.array([r[3].header.stamp.sec * NS + r[3].header.stamp.nanosec for r in audio])
    np.testing.assert_array_equal(stamps, [r[2] for r in audio])
    samples = np.cumsum([0] + [len(r[3].audio.data) // 2 for r in audio[:-1]])
    np.testing.assert_allclose((stamps - T0_NS) / NS, samples / 16000, atol=1e-9)
    qos = read_metadata(fixture_dir / "conversation")["topics_with_message_count"]
    by_topic = {t["topic_metadata"]["name"]: t["topic_metadata"] for t in qos}
    assert by_topic["/audio/audio_info"]["offered_qos_profiles"][0]["durability"] == \
        "transient_local"


def test_mgonzs13_fixture_layout(fixture_dir):
    records = list(read_bag(fixture_dir / "mgonzs13"))
    assert {r[0] for r in records} == {"/audio"}
    msg = records[0][3]
    assert records[0][1] == T.AUDIO_STAMPED
    assert (msg.audio.info.format, msg.audio.info.rate, msg.audio.info.chunk) == (8, 16000, 512)
    assert len(msg.audio.audio_data.int16_data) == 512
    qos = read_metadata(fixture_dir / "mgonzs13")["topics_with_message_count"][0]
    assert qos["topic_metadata"]["offered_qos_profiles"][0]["reliability"] == "best_effort"


@pytest.mark.parametrize("name", ["conversation", "stereo_44k_s16", "f32_48k", "mgonzs13",
                                  "noisy", "barge_in"])
def test_wav_export_equals_source(fixture_dir, tmp_path, name):
    meta = _sidecar(fixture_dir, name)
    report = export_audio(fixture_dir / name, meta["audio_topic"], tmp_path / "x.wav")
    wav, rate = soundfile.read(tmp_path / "x.wav", dtype="int16", always_2d=True)  # [N, C]
    source = fixture_audio(name, seed=0)
    assert rate == meta["sample_rate"] == source.rate
    assert wav.shape == source.audio.shape
    diff = np.abs(wav.astype(np.int32) - to_int16(source.audio).astype(np.int32))
    assert diff.max() <= 1  # int16 quantisation
    if meta["sample_format"] in ("S16LE", "int16"):
        np.testing.assert_array_equal(wav, to_int16(source.quantised()))
    assert sum(report.skipped.values()) == 0 and report.n_used == report.n_messages


def test_noisy_fixture_snr(fixture_dir):
    source = fixture_audio("noisy", seed=0)
    meta = _sidecar(fixture_dir, "noisy")
    utt = meta["utterances"][0]
    clean = speak(utt["text"], 16000)
    start = int(round(utt["onset_s"] * 16000))
    noise = source.audio[start:start + len(clean), 0] - clean
    snr = 10 * np.log10(np.mean(clean ** 2) / np.mean(noise ** 2))
    assert snr == pytest.approx(meta["snr_db"], abs=1.0)


def test_fixtures_are_deterministic(tmp_path):
    a = make_fixture("conversation", tmp_path / "a", seed=3)
    b = make_fixture("conversation", tmp_path / "b", seed=3)
    c = make_fixture("conversation", tmp_path / "c", seed=4)
    data = [(tmp_path / d / "conversation" / "conversation.mcap").read_bytes() for d in "abc"]
    assert a == {**b} and data[0] == data[1]
    assert data[0] != data[2] and a["utterances"] == c["utterances"]


def test_malformed_faults_skipped_and_counted(tmp_path):
    meta = make_fixture("malformed", tmp_path, seed=0)
    bag = tmp_path / "malformed"
    kinds = {f["kind"] for f in meta["faults"]}
    assert kinds == {"missing_info_at_start", "empty_data", "odd_byte_count",
                     "header_stamp_backwards", "oversize_message", "info_change", "nan", "inf",
                     "unsupported_coding_mp3", "info_restored"}
    sizes = [len(r[3].audio.data) for r in read_bag(bag, topics=["/audio/audio_stamped"])]
    assert max(sizes) == 10_000_000 and 0 in sizes and any(s % 2 for s in sizes)
    infos = [r[3] for r in read_bag(bag, topics=["/audio/audio_info"])]
    assert [(i.sample_rate, i.coding_format) for i in infos] == [
        (16000, "wave"), (48000, "wave"), (16000, "mp3"), (16000, "wave")]
    report = export_audio(bag, "/audio/audio_stamped", tmp_path / "m.wav")
    assert dict(report.skipped) == meta["expected_skipped"]
    assert dict(report.warnings) == meta["expected_warnings"]
    assert Counter(r for _, r in report.events) == Counter(meta["expected_skipped"])
    _assert_question_intact(tmp_path / "m.wav", meta)


def _assert_question_intact(wav_path, meta):
    """The full question survives export (shifted by the skipped pre-info audio)."""
    wav, rate = soundfile.read(wav_path, dtype="float64")
    utt = meta["utterances"][0]
    assert utt["text"] == Q1
    clean = to_int16(speak(Q1, rate)) / 32768.0
    lead = meta["faults"][0]
    assert lead["kind"] == "missing_info_at_start"
    start = int(round(utt["onset_s"] * rate)) - lead["messages"] * meta["chunk_frames"]
    segment = wav[start:start + len(clean)]
    assert np.corrcoef(segment, clean)[0, 1] > 0.99


def test_cli_info_and_export(fixture_dir, tmp_path, capsys):
    from a2llm_ros.tools.cli import main

    assert main(["bag", "info", str(fixture_dir / "conversation")]) == 0
    out = capsys.readouterr().out
    assert "/audio/audio_stamped" in out and T.AUDIO_DATA_STAMPED in out
    assert "transient_local" in out and "duration: 7.9" in out
    wav = tmp_path / "c.wav"
    assert main(["bag", "export", str(fixture_dir / "mgonzs13"), "--audio-topic", "/audio",
                 "--out", str(wav), "--rate", "8000"]) == 0
    assert soundfile.info(str(wav)).samplerate == 8000
    assert main(["bag", "fixtures", "--out", str(tmp_path / "fx"), "--names", "noisy"]) == 0
    assert (tmp_path / "fx" / "noisy.json").exists()


def test_ensure_fixtures_reuses_cache(tmp_path):
    from a2llm_ros.tools.bags.fixtures import ensure_fixtures

    out = ensure_fixtures(tmp_path / "cache", seed=1, names=["noisy"])
    mcap = out / "noisy" / "noisy.mcap"
    first = mcap.stat().st_mtime_ns
    assert ensure_fixtures(out, seed=1, names=["noisy"]) == out
    assert mcap.stat().st_mtime_ns == first  # not rewritten
    assert json.loads((out / "noisy.json").read_text())["seed"] == 1
