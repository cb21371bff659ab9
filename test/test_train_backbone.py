"""The curriculum on a Step-Audio-2-mini backbone through the CLI (issue: training at scale).

A tiny folder in the published layout (test/step_folder.py) with a token2wav/
folder (a2llm_ros.tools.data.token2wav_fixture) → toy FLAME-QA → `a2llm init` →
`a2llm train` (stage 0 rvq, 1 connector, 2 joint, 3 affective; base is skipped,
the backbone is pretrained) → finalize → reload → `a2llm generate`.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from a2llm_ros.checkpoint import load_checkpoint
from a2llm_ros.tools.cli import main
from a2llm_ros.configbase import ConfigMismatchError
from a2llm_ros.tools.data.token2wav_fixture import write_token2wav
from a2llm_ros.model.step_token2wav import S3SpeechTokenizer
from step_folder import write_step_folder

pytestmark = pytest.mark.slow

#: A few steps per run; float32 storage so that a reload can be compared exactly.
TRAIN_CONFIG = {
    "preset": "edge", "threads": 2, "storage_dtype": "float32",
    "rvq": {"steps": 12, "batch_size": 4, "warmup_steps": 2, "log_every": 4,
            "checkpoint_every": 6},
    "connector": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "log_every": 2,
                  "checkpoint_every": 2},
    "joint": {"steps": 3, "batch_size": 2, "warmup_steps": 1, "log_every": 1,
              "checkpoint_every": 2},
    "affective": {"steps": 2, "batch_size": 2, "warmup_steps": 1, "log_every": 1,
                  "checkpoint_every": 2},
}
RUNS = ("rvq", "base", "connector", "joint", "affective")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    from a2llm_ros.tools.data.synth import build_synthetic
    root = str(tmp_path_factory.mktemp("flameqa"))
    build_synthetic(root, seed=0, n_pairs=6, n_question_voices=2, workers=1)
    return root


def _write_config(path, **changes) -> str:
    cfg = dict(TRAIN_CONFIG, **changes)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


def _step_folder(path) -> str:
    write_step_folder(str(path))
    write_token2wav(os.path.join(str(path), "token2wav"))
    return str(path)


def _backbone_path(ckpt: str) -> str:
    with open(os.path.join(ckpt, "config.json")) as f:
        return json.load(f)["backbone"]["path"]


def _question(path) -> str:
    t = np.arange(16000) / 16000
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return str(path)


def _max_difference(a, b, keys=None) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    keys = keys or sa.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in keys)


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory, toy_data):
    """init (backbone inside the init folder: a relative path) -> train all -> merged."""
    root = tmp_path_factory.mktemp("relative")
    init = root / "init"
    _step_folder(init / "step")
    assert main(["init", "--preset", "edge", "--backbone", str(init / "step"),
                 "--out", str(init)]) == 0
    config = _write_config(root / "train.yaml", merge_lora=True)
    out = root / "out"
    assert main(["train", "--config", config, "--data", toy_data, "--out", str(out),
                 "--init", str(init), "--no-progress"]) == 0
    return {"root": root, "init": str(init), "out": str(out)}


def test_relative_backbone_path_is_rewritten_for_every_stage(relative_run):
    out, init = relative_run["out"], relative_run["init"]
    assert _backbone_path(init) == "step"
    backbone = os.path.realpath(os.path.join(init, "step"))
    for run in RUNS:
        ckpt = os.path.join(out, run, "checkpoint")
        path = _backbone_path(ckpt)
        assert not os.path.isabs(path)  # relative stays relative ...
        assert os.path.realpath(os.path.join(ckpt, path)) == backbone  # ... to the same folder
    final = os.path.join(out, "final")
    assert os.path.realpath(os.path.join(final, _backbone_path(final))) == backbone


def test_merged_final_stores_the_trained_weights_and_reloads_equal(relative_run):
    out = relative_run["out"]
    final = os.path.join(out, "final")
    with open(os.path.join(final, "config.json")) as f:
        meta = json.load(f)
    assert meta["llm_weights"] == "checkpoint" and not meta["lora"]
    assert not os.path.isdir(os.path.join(final, "lora"))
    trained = load_checkpoint(os.path.join(out, "affective", "checkpoint"))
    assert hasattr(trained.llm, "peft_config")
    trained.llm = trained.llm.merge_and_unload()
    reloaded = load_checkpoint(final)
    assert _max_difference(trained, reloaded) < 1e-6
    # the audio encoder and adaptor are the backbone's (frozen in every stage)
    step = load_checkpoint(os.path.join(relative_run["init"], "step"))
    heard = [k for k in step.state_dict() if k.startswith(("encoder.", "adapter."))]
    assert heard and _max_difference(step, reloaded, heard) == 0.0
    # and it is not the untouched backbone: the LoRA moved the attention weights
    untouched = load_checkpoint(os.path.join(out, "connector", "checkpoint"))
    q_proj = [k for k in reloaded.state_dict() if k.endswith("q_proj.weight")]
    assert q_proj and _max_difference(untouched, reloaded, q_proj) > 1e-5
    # the same answer logits: run one prompt through both
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        a = trained.llm(trained.embed_ids(ids))[0]
        b = reloaded.llm(reloaded.embed_ids(ids))[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_moved_tree_still_finds_its_backbone(relative_run, tmp_path):
    root = relative_run["root"]
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    away = root / "init" / "step_away"
    os.rename(root / "init" / "step", away)  # the original folder cannot be found
    try:
        model = load_checkpoint(str(moved / "out" / "final"))
        assert os.path.realpath(model.backbone_dir) == os.path.realpath(moved / "init" / "step")
    finally:
        os.rename(away, root / "init" / "step")


def test_generate_on_the_final_checkpoint(relative_run, tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", "--checkpoint", os.path.join(relative_run["out"], "final"),
                 "--input", _question(tmp_path / "q.wav"), "--out", str(out),
                 "--max-speech-tokens", "30", "--seed", "0"]) == 0
    audio, rate = sf.read(str(out / "answer.wav"))
    flame = np.load(str(out / "flame.npz"))
    assert rate == 24000 and len(audio) > 0
    frames = flame[flame.files[0]]
    assert frames.ndim == 2 and frames.shape[0] >= 1


def test_bare_folder_init_keeps_the_adapter_beside_the_backbone(tmp_path, toy_data):
    """--init names the Step folder itself; merge_lora false: the adapter in lora/."""
    step = _step_folder(tmp_path / "Step-Audio-2-mini")
    out = tmp_path / "out"
    config = _write_config(tmp_path / "train.yaml", merge_lora=False)
    assert main(["train", "--config", config, "--data", toy_data, "--out", str(out),
                 "--init", step, "--no-progress"]) == 0
    final = str(out / "final")
    with open(os.path.join(final, "config.json")) as f:
        meta = json.load(f)
    assert meta["llm_weights"] == "backbone" and meta["lora"]
    assert meta["backbone"]["path"] == os.path.abspath(step)  # absolute stays absolute
    assert os.path.isfile(os.path.join(final, "lora", "adapter_config.json"))
    # only what A²-LLM adds is stored: no backbone tensor in the checkpoint
    from safetensors import safe_open
    with safe_open(os.path.join(final, "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith(("llm.", "encoder.", "adapter."))]
    trained = load_checkpoint(str(out / "affective" / "checkpoint"))
    reloaded = load_checkpoint(final)
    assert hasattr(reloaded.llm, "peft_config")
    assert _max_difference(trained, reloaded) < 1e-6
    with open(os.path.join(step, "config.json")) as f:  # the folder itself is untouched
        assert json.load(f)["model_type"] == "step_audio_2"


def test_preset_without_backbone_is_refused(toy_data, tmp_path, capsys):
    config = _write_config(tmp_path / "train.yaml")
    assert main(["train", "--config", config, "--data", toy_data, "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 2
    assert "needs a pretrained audio LLM" in capsys.readouterr().err


def test_config_check_compares_the_model_not_the_path(relative_run):
    from a2llm_ros.checkpoint_files import read_config
    a = read_config(os.path.join(relative_run["out"], "joint", "checkpoint"))
    b = read_config(os.path.join(relative_run["out"], "final"))
    assert a.llm.backbone != b.llm.backbone
    a.check_same_model(b)  # only the path string differs
    import dataclasses
    c = dataclasses.replace(b, connector=dataclasses.replace(b.connector, n_layers=1))
    with pytest.raises(ConfigMismatchError, match="connector.n_layers"):
        a.check_same_model(c)


def test_precomputed_s3_tokens_are_the_training_targets(relative_run, toy_data, tmp_path):
    from a2llm_ros.tools.data.speech_tokens import TOKENS_FILE
    from a2llm_ros.model.codecs import make_codec
    from a2llm_ros.model.configs import SpeechCodecConfig
    from a2llm_ros.tools.training.data import TrainData
    data = str(tmp_path / "flameqa")
    shutil.copytree(toy_data, data)
    token2wav = os.path.join(relative_run["init"], "step", "token2wav")
    tokenizer, _ = make_codec(SpeechCodecConfig.step(token2wav))
    computed = TrainData(data)
    computed.compute_speech_codes(tokenizer)  # no file yet: the ONNX tokenizer runs
    assert main(["data", "speech-tokens", data, "--token2wav", token2wav]) == 0
    loaded = TrainData(data)
    loaded.compute_speech_codes(_Refuse())  # only the file is read
    for a, b in zip(computed.speech_codes, loaded.speech_codes):
        assert a.tolist() == b.tolist() and len(a) > 0
    # a file that misses a sample or holds ids outside the vocabulary is refused
    path = os.path.join(data, TOKENS_FILE)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    first = loaded.samples[0].id
    np.savez(path, **{k: v for k, v in arrays.items() if k != first})
    with pytest.raises(ValueError, match=first):
        TrainData(data).compute_speech_codes(_Refuse())
    np.savez(path, **dict(arrays, **{first: np.full(len(arrays[first]), 7000, np.int16)}))
    with pytest.raises(ValueError, match="outside"):
        TrainData(data).compute_speech_codes(_Refuse())


class _Refuse(S3SpeechTokenizer):
    """An S3 tokenizer that must not be called (the precomputed file is used)."""

    def __init__(self):  # no ONNX model behind it
        pass

    def encode(self, wave):
        raise AssertionError("the precomputed tokens should have been used")
