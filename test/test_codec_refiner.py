"""The tiny codec's mel refiner fit (a2llm_ros.tools.training.codec_refiner)."""
import dataclasses
import json
import os

import pytest

import torch
from safetensors.torch import load_file

from a2llm_ros.checkpoint import init_model, load_checkpoint, save_checkpoint
from a2llm_ros.config import A2LLMConfig
from a2llm_ros.configbase import ConfigMismatchError
from a2llm_ros.constants import CONFIG_FILE, WEIGHTS_FILE
from a2llm_ros.tools.data import espeak
from a2llm_ros.tools.training import codec_refiner


def _tiny_checkpoint(path, **codec) -> str:
    cfg = A2LLMConfig.preset("tiny")
    if codec:
        cfg = dataclasses.replace(cfg, codec=dataclasses.replace(cfg.codec, **codec))
    return save_checkpoint(init_model(cfg, seed=0), str(path))


def test_sentences_are_deterministic_dictionary_words():
    words = codec_refiner.dictionary_words()
    assert len(words) > 50_000 and all(w.isalpha() and w.islower() for w in words[:100])
    a = codec_refiner.random_sentences(20, 3, words)
    assert a == codec_refiner.random_sentences(20, 3, words)
    assert a != codec_refiner.random_sentences(20, 4, words)
    assert all(codec_refiner.MIN_WORDS <= len(s.split()) <= codec_refiner.MAX_WORDS for s in a)


def test_fit_lowers_the_log_mel_error_below_the_centroids(tmp_path):
    assert espeak.available(), "espeak-ng is installed by the bootstrap"
    torch.manual_seed(0)
    model = load_checkpoint(_tiny_checkpoint(tmp_path / "ckpt"))
    t2w = model.token2wav
    sentences = codec_refiner.random_sentences(30, 0, codec_refiner.dictionary_words())
    pairs = codec_refiner.speech_pairs(model.speech_tokenizer, sentences, progress=False)
    assert len(pairs) == 30 and all(c.shape[0] == v.shape[0] for c, v in pairs)
    centroids = t2w.codebook.centroids
    before, plain = codec_refiner._l1(t2w.refiner, centroids, pairs)
    assert before == plain  # an untrained refiner decodes to the centroids
    summary = codec_refiner.fit_refiner(t2w, pairs, epochs=4, seed=0, progress=False)
    after, _ = codec_refiner._l1(t2w.refiner, centroids, pairs)
    assert after < 0.9 * plain, (after, plain)
    assert summary["validation_sentences"] == 1 and summary["tokens"] > 0
    assert summary["validation_centroid_l1"] > 0


def test_cli_rewrites_only_the_refiner_and_refuses_a_codec_without_one(tmp_path, capsys):
    src = _tiny_checkpoint(tmp_path / "src")
    out = str(tmp_path / "out")
    assert codec_refiner.main(["--checkpoint", src, "--out", out, "--sentences", "12",
                               "--epochs", "1", "--threads", "1", "--no-progress"]) == 0
    assert "validation L1" in capsys.readouterr().out
    old = load_file(os.path.join(src, WEIGHTS_FILE))
    new = load_file(os.path.join(out, WEIGHTS_FILE))
    assert set(old) == set(new)
    refiner = {k for k in new if k.startswith("codec.refiner.")}
    assert refiner and any(not torch.equal(old[k], new[k]) for k in refiner)
    assert all(torch.equal(old[k], new[k]) for k in set(new) - refiner)
    assert load_checkpoint(out).token2wav.refiner.net[-1].weight.abs().sum() > 0
    plain = _tiny_checkpoint(tmp_path / "plain", refiner_hidden=0, refiner_context=0,
                             lookahead_tokens=0)
    assert codec_refiner.main(["--checkpoint", plain, "--sentences", "4", "--no-progress"]) == 2
    assert "has no mel refiner" in capsys.readouterr().err


def test_add_gives_a_checkpoint_from_before_the_refiner_one(tmp_path):
    plain = _tiny_checkpoint(tmp_path / "old", refiner_hidden=0, refiner_context=0,
                             lookahead_tokens=0)
    with open(os.path.join(plain, CONFIG_FILE)) as f:
        meta = json.load(f)
    for key in ("refiner_hidden", "refiner_context"):  # as written before they existed
        del meta["config"]["codec"][key]
    with open(os.path.join(plain, CONFIG_FILE), "w") as f:
        json.dump(meta, f)
    with pytest.raises(ConfigMismatchError, match="refiner_context, refiner_hidden"):
        load_checkpoint(plain)
    before = load_file(os.path.join(plain, WEIGHTS_FILE))
    out = str(tmp_path / "new")
    assert codec_refiner.main(["--checkpoint", plain, "--out", out, "--add", "--sentences",
                               "8", "--epochs", "1", "--threads", "1", "--no-progress"]) == 0
    model = load_checkpoint(out)
    assert model.token2wav.lookahead_tokens == 1 and model.token2wav.refiner is not None
    after = load_file(os.path.join(out, WEIGHTS_FILE))
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="nothing to add"):
        codec_refiner.add_refiner(out, 512, 3, 1)
    assert codec_refiner.main(["--checkpoint", out, "--add", "--no-progress"]) == 2
