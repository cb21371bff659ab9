"""FLAME-QA training targets for a Step-Audio-2-mini backbone (issue: FLAME-QA for Step).

A tiny Step folder in the published layout (test/step_folder.py) with a token2wav/
fixture, loaded as an A²-LLM (``paper`` preset: Step's layout, 1 text : 4 speech),
and a 6-pair synthetic FLAME-QA set: the answers' speech targets are the S3 tokens
(computed by the ONNX tokenizer, and equally read from ``speech_tokens_s3.npz``),
the text targets the backbone's tokenizer's ids, interleaved as Step-Audio-2 writes
them (docs/training.md, "FLAME-QA for Step-Audio-2-mini"); the motion targets keep
5 speech tokens per segment.  A token file that cannot be used stops with its reason.
"""
from __future__ import annotations

import os
import shutil
from typing import List, Sequence

import numpy as np
import pytest

from a2llm_ros.tools.cli import main
from a2llm_ros.constants import FRAMES_PER_SEGMENT, SPEECH_TOKENS_PER_SEGMENT
from a2llm_ros.tools.data.speech_tokens import TOKENS_FILE
from a2llm_ros.tools.data.token2wav_fixture import write_token2wav
from a2llm_ros.generation import AnswerReader, GenerationConfig
from a2llm_ros.model.chat import SPEECH, TEXT, build_answer_sequence
from a2llm_ros.model.configs import InterleaveConfig, STEP_SPEECH_PER_GROUP, STEP_TEXT_PER_GROUP
from a2llm_ros.model.configs import STEP_CODES, STEP_KIND
from a2llm_ros.tools.training.data import TrainData
from step_folder import N_SPEECH, SPEECH_START_ID, write_step_folder

#: Answer audio a precomputed token row may miss or exceed before it is refused.
TOO_MANY_TOKENS = 10
#: An id past the S3 vocabulary.
OUT_OF_RANGE_ID = STEP_CODES + 439


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from a2llm_ros.tools.data.synth import build_synthetic
    root = str(tmp_path_factory.mktemp("flameqa"))
    build_synthetic(root, seed=0, n_pairs=6, n_question_voices=2, workers=1)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny Step folder as an A²-LLM (its tokenizer, its S3 codec, ``paper`` layout)."""
    from a2llm_ros.checkpoint import load_checkpoint
    step = str(tmp_path_factory.mktemp("step") / "Step-Audio-2-mini")
    write_step_folder(step)
    write_token2wav(os.path.join(step, "token2wav"))
    return load_checkpoint(step)


@pytest.fixture
def own_data(data, tmp_path):
    """A copy of the data set this test may write a token file into."""
    root = str(tmp_path / "flameqa")
    shutil.copytree(data, root)
    return root


def step_layout(text_ids: Sequence[int], speech_ids: Sequence[int], tts_pad: int,
                speech_pad: int, tts_end: int, eot: int) -> List[int]:
    """Reference of Step-Audio-2's answer section after ``<tts_start>``, written from
    the description in docs/training.md: groups of 1 text slot and 4 speech slots
    while either stream has ids left, empty slots padded, then ``<tts_end> <|EOT|>``."""
    out, g = [], 0
    while g < len(text_ids) or STEP_SPEECH_PER_GROUP * g < len(speech_ids):
        out.append(text_ids[g] if g < len(text_ids) else tts_pad)
        for k in range(STEP_SPEECH_PER_GROUP * g, STEP_SPEECH_PER_GROUP * (g + 1)):
            out.append(speech_ids[k] if k < len(speech_ids) else speech_pad)
        g += 1
    return out + [tts_end, eot]


def _reference(model, text_ids, codes) -> List[int]:
    v = model.vocab
    return step_layout(list(text_ids), [v.speech_id(int(c)) for c in codes], v.tts_pad,
                       v.speech_pad, v.tts_end, v.eot)


def test_presets_are_step_layout_and_tiny_keeps_its_schedule():
    for name in ("edge", "paper"):
        cfg = InterleaveConfig.preset(name)
        assert (cfg.text_per_group, cfg.speech_per_group, cfg.enforce) == (1, 4, False)
    assert (STEP_TEXT_PER_GROUP, STEP_SPEECH_PER_GROUP) == (1, 4)
    tiny = InterleaveConfig.preset("tiny")
    assert (tiny.text_per_group, tiny.speech_per_group, tiny.enforce) == (4, 5, True)


@pytest.mark.parametrize("n_text,n_speech", [(3, 10), (7, 50), (5, 6), (0, 9), (4, 0)])
def test_step_layout_groups_padding_and_ends(model, n_text, n_speech):
    v = model.vocab
    text = list(range(40, 40 + n_text))
    codes = [(7 * k) % N_SPEECH for k in range(n_speech)]
    seq = build_answer_sequence(text, codes, v, InterleaveConfig.preset("paper"))
    assert seq.ids == _reference(model, text, codes)
    assert v.speech_pad == SPEECH_START_ID + N_SPEECH  # <audio_6561>
    n_groups = max(-(-n_speech // 4), n_text)
    assert len(seq.ids) == 5 * n_groups + 2  # whole groups, <tts_end>, <|EOT|>
    # kinds: text slots and <|EOT|> are text targets; only real speech ids query motion
    assert sum(seq.is_speech_token) == n_speech
    assert [i for i, k in zip(seq.ids, seq.is_speech_token) if k] == \
        [v.speech_id(c) for c in codes]
    assert sum(seq.is_text) == n_groups + 1 and seq.is_text[-1] and not seq.is_text[-2]
    # the streaming generator's reading (not enforced): text and speech by id range,
    # <tts_pad>, the padding code and <tts_end> dropped, <|EOT|> ends the answer
    reader = AnswerReader(model, GenerationConfig())
    kinds = [reader.read(tok) for tok in seq.ids]
    assert reader.finished
    assert [t for t, k in zip(seq.ids, kinds) if k == TEXT] == text
    assert [t for t, k in zip(seq.ids, kinds) if k == SPEECH] == [v.speech_id(c) for c in codes]


def test_training_targets_hold_the_s3_tokens_from_file_and_computed(model, own_data):
    assert model.cfg.codec.kind == STEP_KIND and model.cfg.interleave.enforce is False
    assert os.path.samefile(model.text_tokenizer.path, model.backbone_dir)  # Step's tokenizer
    computed = TrainData(own_data)
    computed.compute_speech_codes(model.speech_tokenizer)  # no file: the ONNX tokenizer runs
    assert main(["data", "speech-tokens", own_data, "--token2wav",
                 os.path.join(model.backbone_dir, "token2wav")]) == 0
    loaded = TrainData(own_data)
    loaded.compute_speech_codes(None, kind=STEP_KIND)  # no tokenizer: only the file is read
    for a, b, s in zip(computed.speech_codes, loaded.speech_codes, loaded.samples):
        assert a.tolist() == b.tolist()
        assert len(b) == len(s.answer_audio) // 640 > 0  # 25 Hz of 16 kHz audio
        assert 0 <= b.min() and b.max() < STEP_CODES
    loaded.compute_motion_codes(model.motion_tokenizer)
    batch = model.collate_samples(loaded.items(range(len(loaded))))
    for i, s in enumerate(loaded.samples):
        n = int(batch.answer_lengths[i])
        ids = batch.answer_ids[i, :n].tolist()
        text_ids = model.text_tokenizer.encode(s.answer_text)
        assert model.text_tokenizer.decode(text_ids) == s.answer_text
        assert ids == _reference(model, text_ids, loaded.speech_codes[i])
        speech = [t for t, k in zip(ids, batch.answer_is_speech[i, :n].tolist()) if k]
        assert speech == [SPEECH_START_ID + int(c) for c in loaded.speech_codes[i]]
        # motion: 5 speech tokens a segment, clipped to the FLAME's whole 5-frame codes
        n_speech = len(loaded.speech_codes[i])
        segments = min(n_speech // SPEECH_TOKENS_PER_SEGMENT,
                       s.answer_flame.shape[0] // FRAMES_PER_SEGMENT)
        assert int(batch.motion_lengths[i]) == segments == \
            min(n_speech // SPEECH_TOKENS_PER_SEGMENT, len(loaded.motion_codes[i]))
    assert any(int(batch.motion_lengths[i]) == len(c) // SPEECH_TOKENS_PER_SEGMENT
               for i, c in enumerate(loaded.speech_codes))


def _rewrite(path: str, change) -> None:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(path, **change(arrays))


def _first(arrays: dict) -> str:
    return sorted(k for k in arrays if not k.startswith("__"))[0]


def _replace_first(arrays: dict, make) -> dict:
    """``arrays`` with the first sample's row replaced by ``make(row)``."""
    key = _first(arrays)
    return dict(arrays, **{key: make(arrays[key])})


#: Case -> (how the file is spoilt, what the error says).
BAD_FILES = {
    "missing sample": (lambda a: {k: v for k, v in a.items() if k != _first(a)},
                       "no speech tokens for 1 sample"),
    "ids out of range": (lambda a: _replace_first(a, lambda r: np.full_like(r, OUT_OF_RANGE_ID)),
                         "outside"),
    "too long": (lambda a: _replace_first(
        a, lambda r: np.concatenate([r, np.zeros(TOO_MANY_TOKENS, r.dtype)])),
        "speech tokens, its answer"),
    "not one row": (lambda a: _replace_first(a, lambda r: r[None]), "expected one row"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_token_file_is_refused_naming_the_problem(model, own_data, case):
    path = os.path.join(own_data, TOKENS_FILE)
    assert main(["data", "speech-tokens", own_data, "--token2wav",
                 os.path.join(model.backbone_dir, "token2wav")]) == 0
    change, message = BAD_FILES[case]
    _rewrite(path, change)
    data = TrainData(own_data)
    before = list(data.speech_codes)
    with pytest.raises(ValueError, match=message) as err:
        data.compute_speech_codes(model.speech_tokenizer)  # a bad file is not silently skipped
    assert path in str(err.value) and "a2llm data speech-tokens" in str(err.value)
    assert data.speech_codes == before  # nothing half-assigned


def test_unreadable_file_and_neither_source(model, own_data):
    path = os.path.join(own_data, TOKENS_FILE)
    with pytest.raises(ValueError, match="speech_tokens_s3.npz.*speech_tokenizer_v2_25hz.onnx"):
        TrainData(own_data).compute_speech_codes(None, kind=STEP_KIND)
    with open(path, "wb") as f:
        f.write(b"not a zip archive")
    with pytest.raises(ValueError, match="unreadable speech-token file"):
        TrainData(own_data).compute_speech_codes(model.speech_tokenizer)


def test_kmeans_codec_ignores_the_s3_file(own_data):
    """The tiny model's k-means codec encodes the answers itself, file or not."""
    from a2llm_ros.checkpoint import load_checkpoint
    tokenizer = load_checkpoint("default").speech_tokenizer
    with open(os.path.join(own_data, TOKENS_FILE), "wb") as f:
        f.write(b"not a zip archive")
    data = TrainData(own_data)
    data.compute_speech_codes(tokenizer)
    for codes, s in zip(data.speech_codes, data.samples):
        assert codes.tolist() == tokenizer.encode(s.answer_audio).tolist()
