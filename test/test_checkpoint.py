"""Checkpoint save/load: round trip, strict errors, LoRA (Step backbones: test_step_backbone)."""
import json
import os

import numpy as np
import pytest
import torch

from a2llm_ros.checkpoint import init_model, load_checkpoint, save_checkpoint
from a2llm_ros.checkpoint_files import CheckpointError, resolve_checkpoint
from a2llm_ros.config import A2LLMConfig
from a2llm_ros.configbase import ConfigMismatchError
from a2llm_ros.engines.torch_backend import TorchBackend
from a2llm_ros.generation import GenerationConfig, StreamingGenerator

torch.set_num_threads(1)
GEN = GenerationConfig(greedy=True, max_speech_tokens=12)


def question(seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny"))
    model = init_model(A2LLMConfig.preset("tiny"), seed=1)
    save_checkpoint(model, out)
    return out, model


def test_round_trip_same_outputs(tiny_dir):
    out, model = tiny_dir
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json",
                                       "tokenizer_config.json"]
    meta = json.load(open(os.path.join(out, "config.json")))
    assert meta["preset"] == "tiny" and meta["flame_layout"]["dim"] == 58
    assert meta["llm_weights"] == "checkpoint" and meta["backbone"] is None
    assert set(meta["versions"]) == {"a2llm_ros", "torch", "transformers"}
    loaded = load_checkpoint(out, expected_config=A2LLMConfig.preset("tiny"))
    a = StreamingGenerator(TorchBackend(model), GEN).generate(question())
    b = StreamingGenerator(TorchBackend(loaded), GEN).generate(question())
    assert a.text == b.text and a.speech_codes == b.speech_codes
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(a.frames, b.frames)
    mt_a, mt_b = model.motion_tokenizer, loaded.motion_tokenizer
    assert torch.equal(mt_a.norm_std, mt_b.norm_std)
    assert torch.equal(mt_a.quantizer.codebooks, mt_b.quantizer.codebooks)


def test_tiny_size_budget(tiny_dir):
    out, model = tiny_dir
    assert model.n_params() <= 20_000_000
    assert os.path.getsize(os.path.join(out, "model.safetensors")) <= 30e6


def test_config_mismatch_names_fields(tiny_dir, tmp_path):
    out, _ = tiny_dir
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in os.listdir(out):
        (bad / name).write_bytes(open(os.path.join(out, name), "rb").read())
    meta = json.load(open(bad / "config.json"))
    meta["config"]["llm"]["flash_widgets"] = 3
    del meta["config"]["connector"]["n_heads"]
    json.dump(meta, open(bad / "config.json", "w"))
    with pytest.raises(ConfigMismatchError) as err:
        load_checkpoint(str(bad))
    assert "flash_widgets" in str(err.value) or "n_heads" in str(err.value)
    with pytest.raises(ConfigMismatchError, match="hidden_size"):
        load_checkpoint(out, expected_config=A2LLMConfig.preset(
            "tiny", llm=dict(hidden_size=128)))


def test_weight_errors_name_keys(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    out, _ = tiny_dir
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in os.listdir(out):
        (bad / name).write_bytes(open(os.path.join(out, name), "rb").read())
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["connector.bos"]
    tensors["extra.thing"] = torch.zeros(2)
    tensors["encoder.conv1.bias"] = torch.zeros(3)
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(bad))
    msg = str(err.value)
    assert "connector.bos" in msg and "extra.thing" in msg and "encoder.conv1.bias" in msg


def test_resolve_default_and_missing(tmp_path, monkeypatch):
    from a2llm_ros import checkpoint_files
    assert resolve_checkpoint("default") == checkpoint_files.DEFAULT_CHECKPOINT
    monkeypatch.setattr(checkpoint_files, "DEFAULT_CHECKPOINT", str(tmp_path / "not_built"))
    with pytest.raises(FileNotFoundError, match="make default-checkpoint"):
        resolve_checkpoint("default")
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_checkpoint(str(tmp_path))


def test_lora_adapter_saved_and_loaded(tmp_path):
    from peft import LoraConfig, get_peft_model
    model = init_model(A2LLMConfig.preset("tiny"), seed=3)
    model.llm = get_peft_model(model.llm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
    out = str(tmp_path / "lora_ckpt")
    save_checkpoint(model, out)
    assert os.path.isfile(os.path.join(out, "lora", "adapter_config.json"))
    loaded = load_checkpoint(out)
    assert hasattr(loaded.llm, "peft_config")
    lora = {k: v for k, v in model.llm.state_dict().items() if "lora_B" in k}
    got = loaded.llm.state_dict()
    assert lora and all(v.abs().sum() > 0 and torch.equal(v, got[k]) for k, v in lora.items())
    a = StreamingGenerator(TorchBackend(model), GEN).generate(question())
    b = StreamingGenerator(TorchBackend(loaded), GEN).generate(question())
    assert a.speech_codes == b.speech_codes
    np.testing.assert_allclose(a.frames, b.frames, atol=1e-5)
    # the adapter is active in the generation path
    from a2llm_ros.model.audio_llm import llm_hidden
    x = torch.randn(1, 7, 256)
    with torch.no_grad():
        on, _ = llm_hidden(loaded.llm, x)
        with loaded.llm.disable_adapter():
            off, _ = llm_hidden(loaded.llm, x)
    assert (on - off).abs().max() > 1e-4


def test_shipped_default_checkpoint_matches_the_code():
    """The packaged default checkpoint reads strictly with today's configs (a field added
    to a config without updating the shipped config.json breaks the node and the demo)."""
    from a2llm_ros.checkpoint_files import read_config
    cfg = read_config(resolve_checkpoint("default"))
    assert cfg.preset_name == "tiny" and cfg.codec.kind == "kmeans_mel"
    model = load_checkpoint(resolve_checkpoint("default"))
    assert model.token2wav.sample_rate == 16_000 and model.token2wav.is_fitted
