"""espeak-ng synthesis, speech-driven motion and the synthetic FLAME-QA builder."""
import filecmp
import os

import numpy as np
import pytest

from a2llm_ros.tools.data import espeak
from a2llm_ros.tools.data.flameqa import FlameQAReader
from a2llm_ros.tools.data.motion_synth import blink_track, synthesize_motion
from a2llm_ros.tools.data.qa_text import EMOTIONS, QA_PAIRS, high_intensity_pairs
from a2llm_ros.tools.data.synth import build_synthetic
from a2llm_ros.tools.data.visemes import EXPR_MOUTH_OPEN, phoneme_visemes
from a2llm_ros.flame.layout import DEFAULT_LAYOUT

pytestmark = pytest.mark.skipif(not espeak.available(), reason="libespeak-ng not available")
JAW_X = DEFAULT_LAYOUT.jaw.start
MOUTH = DEFAULT_LAYOUT.expr.start + EXPR_MOUTH_OPEN


def _shards(root):
    folder = os.path.join(root, "shards")
    return sorted(os.listdir(folder)), folder


def test_qa_text_set():
    assert len(QA_PAIRS) >= 40 and {p.emotion for p in QA_PAIRS} == set(EMOTIONS)
    assert all(3 <= len(p.answer.split()) <= 10 for p in QA_PAIRS)
    assert len({p.answer.lower() for p in QA_PAIRS}) == len(QA_PAIRS)
    assert high_intensity_pairs() and all(p.emotion != "neutral" for p in high_intensity_pairs())


def test_synthesize_gives_16k_audio_and_phonemes():
    out = espeak.synthesize("Mama baby.", espeak.ROBOT_VOICE)
    assert out.audio.dtype == np.float32 and out.sample_rate == 16000
    assert 0.3 < out.seconds < 2.0 and np.abs(out.audio).max() > 0.05
    names = [p for p, _, _ in out.phonemes]
    assert names.count("m") == 2 and names.count("b") == 2
    starts = [s for _, s, _ in out.phonemes]
    assert starts == sorted(starts) and out.phonemes[-1][2] <= out.seconds + 1e-6
    with pytest.raises(ValueError):
        espeak.synthesize("hello", espeak.VoiceSpec("x", "no-such-voice"))


def test_visemes_of_ipa():
    assert phoneme_visemes("m") == ["bilabial"]
    assert phoneme_visemes("ɑː") == ["open"]
    assert phoneme_visemes("aɪ") == ["open", "wide"]
    assert phoneme_visemes("uː") == ["rounded"]
    assert phoneme_visemes("_") == ["rest"]


def test_jaw_opens_on_vowels_closes_on_bilabials():
    out = espeak.synthesize("Mama baby.", espeak.ROBOT_VOICE)
    flame = synthesize_motion(out.audio, out.phonemes, "neutral", seed=0)
    assert flame.shape == (int(round(out.seconds * 25)), 58) and flame.dtype == np.float32

    def frames_of(kind):
        mids = [(s + e) / 2 for p, s, e in out.phonemes if phoneme_visemes(p)[0] == kind]
        return [min(int(t * 25), len(flame) - 1) for t in mids]

    open_frames, closed_frames = frames_of("open") + frames_of("mid"), frames_of("bilabial")
    assert len(closed_frames) == 4 and open_frames
    assert flame[open_frames, JAW_X].max() > 0.12
    assert flame[closed_frames, JAW_X].max() < 0.06
    assert flame[closed_frames, MOUTH].max() < -0.3  # lips pressed
    assert flame[open_frames, MOUTH].max() > 0.2


def test_emotion_offsets_differ():
    out = espeak.synthesize("Yes.", espeak.ROBOT_VOICE)
    happy = synthesize_motion(out.audio, out.phonemes, "happy", seed=0)
    angry = synthesize_motion(out.audio, out.phonemes, "angry", seed=0)
    assert happy[-1, 6] > 0.5 and angry[-1, 4] > 0.5  # cheek raise / brow furrow
    assert np.abs(happy[:, DEFAULT_LAYOUT.head]).max() < 0.3  # small head motion (rad)
    lids = happy[:, DEFAULT_LAYOUT.eyelids]
    assert lids.min() >= 0.0 and lids.max() <= 1.0


def test_build_deterministic_and_held_out(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    info = build_synthetic(a, seed=3, n_pairs=2, n_question_voices=2, workers=1)
    build_synthetic(b, seed=3, n_pairs=2, n_question_voices=2, workers=2)
    build_synthetic(c, seed=4, n_pairs=2, n_question_voices=2, workers=1)
    names, folder_a = _shards(a)
    _, folder_b = _shards(b)
    match, mismatch, errors = filecmp.cmpfiles(folder_a, folder_b, names, shallow=False)
    assert match == names and not mismatch and not errors
    assert filecmp.cmp(os.path.join(a, "dataset.json"), os.path.join(b, "dataset.json"),
                       shallow=False)
    flames_a = {s.id: s for s in FlameQAReader(a)}
    flames_c = {s.id: s for s in FlameQAReader(c)}
    assert flames_a.keys() == flames_c.keys() and len(flames_a) == 6
    assert any(not np.array_equal(flames_a[k].answer_flame, flames_c[k].answer_flame)
               for k in flames_a)
    held = espeak.HELD_OUT_VOICE.id
    assert info["voices"]["held_out"] == [held]
    for s in flames_a.values():
        assert (s.question_voice == held) == (s.split == "test")
        assert s.answer_voice == espeak.ROBOT_VOICE.id
        assert abs(len(s.answer_flame) - s.answer_seconds * 25) <= 1
    test_answers = {s.answer_id for s in flames_a.values() if s.split == "test"}
    train_answers = {s.answer_id for s in flames_a.values() if s.split == "train"}
    assert test_answers <= train_answers


def test_more_question_voices_keep_the_test_split_and_the_first_voices(tmp_path):
    """Adding voices past the eighth leaves every earlier sample byte-identical, and no
    training rendition shares the held-out rendition's seed (its blinks and head drift)."""
    few, many = str(tmp_path / "few"), str(tmp_path / "many")
    build_synthetic(few, seed=0, n_pairs=1, n_question_voices=8, workers=1)
    build_synthetic(many, seed=0, n_pairs=1, n_question_voices=10, workers=1)
    a = {s.id: s for s in FlameQAReader(few)}
    b = {s.id: s for s in FlameQAReader(many)}
    assert a.keys() < b.keys() and len(b) == 11
    for key, sample in a.items():
        assert np.array_equal(sample.question_audio, b[key].question_audio), key
        assert np.array_equal(sample.answer_flame, b[key].answer_flame), key
    test = [s for s in b.values() if s.split == "test"][0]
    for s in b.values():
        if s is not test:
            assert not np.array_equal(s.answer_flame, test.answer_flame), s.id


def test_blinks_seeded_every_few_seconds():
    lids = blink_track(np.random.default_rng(5), 25 * 20)  # 20 s
    closed = lids > 0.5
    starts = np.flatnonzero(closed[1:] & ~closed[:-1])
    assert 3 <= len(starts) <= 7
    assert np.array_equal(lids, blink_track(np.random.default_rng(5), 25 * 20))
    assert lids.max() > 0.9 and lids.min() == 0.0
