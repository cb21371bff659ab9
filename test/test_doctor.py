"""`a2llm doctor` runs in the bootstrapped environment and names every backend's state."""
import subprocess
import sys


def test_doctor_names_every_backend():
    res = subprocess.run([sys.executable, "-m", "a2llm_ros", "doctor"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for name in ("torch (cpu)", "torch (cuda)", "onnxruntime", "tensorrt", "pycuda"):
        line = next((ln for ln in out.splitlines() if f"] {name} " in ln), None)
        assert line is not None, f"{name} missing from doctor output:\n{out}"
        assert line.strip().startswith(("[ok]", "[--]"))
    assert "backend 'auto' picks:" in out
    assert "a2llm_ros.msg" in out and "audio_common_msgs" in out


# ----------------------------------------------------------------------------- --checkpoint

def _elements(shapes):
    total = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def test_doctor_describes_checkpoints(tmp_path, checkpoint, capsys, monkeypatch):
    import dataclasses
    import json
    import os

    import safetensors
    import safetensors.torch
    import torch
    from safetensors.torch import load_file, save_file
    from step_folder import tensor_shapes, tiny_config, write_step_folder

    from a2llm_ros.checkpoint import init_model, save_checkpoint
    from a2llm_ros.tools.cli import main
    from a2llm_ros.tools.doctor import (LAYOUT_A2LLM, LAYOUT_ON_BACKBONE, LAYOUT_STEP,
                                        describe_checkpoint)
    from a2llm_ros.model.step_audio import step_config
    torch.set_num_threads(1)
    folder = write_step_folder(str(tmp_path / "step"))
    n = _elements(tensor_shapes(tiny_config()).values())

    cfg = step_config(folder)
    cfg = dataclasses.replace(
        cfg, connector=dataclasses.replace(cfg.connector, d_model=64, n_layers=1, n_heads=4,
                                           ff=128),
        motion=dataclasses.replace(cfg.motion, latent_dim=32, hidden=64, enc_depth=1,
                                   dec_depth=1))
    ckpt = save_checkpoint(init_model(cfg, seed=0), str(tmp_path / "ckpt"))
    own = {k: v for k, v in load_file(os.path.join(ckpt, "model.safetensors")).items()
           if not k.startswith("codec.")}
    n_own = _elements(v.shape for v in own.values())

    def no_loading(*args, **kwargs):
        raise AssertionError("doctor must read safetensors headers only")
    monkeypatch.setattr(safetensors, "safe_open", no_loading)
    monkeypatch.setattr(safetensors.torch, "load_file", no_loading)

    d = describe_checkpoint(folder)
    assert d["layout"] == LAYOUT_STEP
    assert (d["sizes"]["layers"], d["sizes"]["hidden"], d["sizes"]["vocab"],
            d["sizes"]["kv_heads"], d["sizes"]["audio_layers"]) == (2, 64, 158720, 2, 2)
    assert d["weights"]["n_elements"] == n and d["weights"]["dtypes"] == {"bf16": n}
    assert d["weights"]["n_tensors"] == 70 and d["weights"]["stored_bytes"] == 2 * n
    assert main(["doctor", "--checkpoint", folder]) == 0
    out = capsys.readouterr().out
    assert "Step-Audio-2-mini folder" in out and "2 layers, hidden 64" in out
    assert "vocabulary 158720" in out and "bf16 (all 70 tensors)" in out
    assert f"{2 * n / 1e6:.1f} MB in bf16, {4 * n / 1e6:.1f} MB in fp32" in out
    assert f"{n:,} in 70 tensors" in out

    d = describe_checkpoint(ckpt)
    assert d["layout"] == LAYOUT_ON_BACKBONE and not d["problems"]
    assert d["backbone"]["path"] == os.path.abspath(folder)
    assert d["backbone_weights"]["n_elements"] == n
    assert d["checkpoint_weights"]["n_elements"] == n_own
    assert d["weights"]["n_elements"] == n + n_own
    assert main(["doctor", "--checkpoint", ckpt]) == 0
    out = capsys.readouterr().out
    assert "A²-LLM on a backbone" in out and "fingerprint matches" in out
    assert f"{2 * (n + n_own) / 1e6:.1f} MB in bf16" in out

    d = describe_checkpoint(checkpoint)
    assert d["layout"] == LAYOUT_A2LLM and d["backbone_weights"] is None
    assert (d["sizes"]["layers"], d["sizes"]["hidden"]) == (4, 256)
    assert d["weights"]["dtypes"].get("fp32", 0) > 0.99 * d["weights"]["n_elements"]

    # a changed backbone, a wrong model_type, a folder that is nothing: rc 1, named
    monkeypatch.undo()
    shard = os.path.join(folder, "model-00002-of-00002.safetensors")
    tensors = load_file(shard)
    tensors["adapter.linear2.bias"] = torch.zeros(65, dtype=torch.bfloat16)
    save_file(tensors, shard)
    assert main(["doctor", "--checkpoint", ckpt]) == 1
    out = capsys.readouterr().out
    assert "[--] backbone" in out and "does not match" in out
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config["model_type"] = "qwen2"
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    assert main(["doctor", "--checkpoint", folder]) == 1
    out = capsys.readouterr().out
    assert "model_type 'qwen2'" in out and "config.json" in out
    assert main(["doctor", "--checkpoint", str(tmp_path)]) == 1
    assert "no config.json" in capsys.readouterr().out
