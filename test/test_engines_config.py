"""Engine configuration, cache keys, sidecars, backend choice and missing-runtime errors."""
import builtins
import json

import pytest

from a2llm_ros.config import A2LLMConfig
from a2llm_ros.configbase import ConfigMismatchError
from a2llm_ros.engines import BackendConfig, EngineError, describe_auto
from a2llm_ros.engines import cache
from a2llm_ros.engines.manifest import NEEDED
from a2llm_ros.tools.export.graphs import profile_dims, prompt_overhead
from a2llm_ros.engines.select import choose_auto
from a2llm_ros.engines.tensorrt_build import engine_options, graph_precision

GPU = {"name": "Orin", "compute_capability": "8.7"}


def test_backend_config_presets_validation_and_round_trip():
    for name in ("tiny", "edge", "paper"):
        cfg = BackendConfig.preset(name)
        assert cfg.kind == "auto" and cfg.force_engine_update is False
        assert BackendConfig.from_dict(cfg.to_dict()) == cfg
    assert BackendConfig.preset("paper").max_context == 4096
    with pytest.raises(ValueError, match="kind='tflite'"):
        BackendConfig(kind="tflite")
    with pytest.raises(ValueError, match="precision='int4'"):
        BackendConfig(precision="int4")
    with pytest.raises(ValueError, match="device='gpu'"):
        BackendConfig(device="gpu")
    with pytest.raises(ConfigMismatchError, match="model_path"):
        BackendConfig.from_dict({**BackendConfig().to_dict(), "model_path": "x"})
    cfg = BackendConfig()
    assert cfg.onnx_dir("/c") == "/c/onnx" and cfg.engine_dir("/c") == "/c/tensorrt"
    cfg = BackendConfig(model_file_path="/m", engine_file_path="/e")
    assert cfg.onnx_dir("/c") == "/m" and cfg.engine_dir("/c") == "/e"
    assert cfg.kv_mode("tensorrt") == "static" and cfg.kv_mode("onnxruntime") == "dynamic"
    assert BackendConfig(kv_cache="dynamic").kv_mode("tensorrt") == "dynamic"


def test_profile_shapes_follow_the_config():
    import numpy as np

    from a2llm_ros.engines.torch_backend import TorchBackend, prompt_embeds
    from a2llm_ros.model.a2llm import A2LLM
    from a2llm_ros.model.chat import n_positions
    model = A2LLM(A2LLMConfig.preset("tiny"))
    extra = prompt_overhead(model)  # the chat prompt's ids around the <audio_patch> run
    assert extra > 50 and all(len(model.prompt(n).ids) == extra + n for n in (1, 2, 25, 375))
    dims = profile_dims(model, BackendConfig(max_question_s=10.0, opt_question_s=2.0,
                                             max_context=1024, opt_context=300))
    assert dims["mel_frames"] == (10, 200, 1000)  # 0.1 s, 2 s, 10 s at 100 Hz
    # Step's <audio_patch> count (~12.5 Hz) + the rest of the prompt
    assert dims["prompt_len"] == (extra + 1, extra + 25, extra + 125)
    assert [n_positions(t) for t in dims["mel_frames"]] == [1, 25, 125]
    assert dims["past_len"] == (extra + 1, 300, 1023)
    # the prompt the generator builds for a 2 s question has the "opt" length
    wave = np.zeros(2 * 16000, np.float32)
    assert prompt_embeds(TorchBackend(model), wave).shape[1] == dims["prompt_len"][1]
    # the encoder's 1500 positions (30 s) cap the question length
    assert profile_dims(model, BackendConfig(max_question_s=60.0))["mel_frames"][2] == 3000
    with pytest.raises(ValueError, match="max_context 200 must exceed the longest prompt"):
        profile_dims(model, BackendConfig(max_context=200, opt_context=100))


def test_cache_key_changes_with_every_ingredient():
    opts = {"precision": "fp16", "workspace_mb": 1024}
    base = cache.cache_key("a" * 64, "10.3.0", GPU, opts)
    assert base == cache.cache_key("a" * 64, "10.3.0", dict(GPU), dict(opts))
    variants = [cache.cache_key("b" * 64, "10.3.0", GPU, opts),
                cache.cache_key("a" * 64, "10.7.0", GPU, opts),
                cache.cache_key("a" * 64, "10.3.0", {**GPU, "name": "H100"}, opts),
                cache.cache_key("a" * 64, "10.3.0", {**GPU, "compute_capability": "9.0"}, opts),
                cache.cache_key("a" * 64, "10.3.0", GPU, {**opts, "precision": "int8"})]
    assert len({base, *variants}) == 6


def test_engine_sidecar_validation_and_mismatch_messages(tmp_path):
    rec = cache.make_record("llm", "a" * 64, "10.3.0", GPU, {"precision": "fp16"})
    path = tmp_path / "llm.plan.json"
    path.write_text(json.dumps(rec))
    assert cache.read_record(str(path))["cache_key"] == rec["cache_key"]
    assert cache.mismatches(rec, rec) == []
    h100 = {"name": "H100", "compute_capability": "9.0"}
    other = cache.make_record("llm", "b" * 64, "10.7.0", h100, {"precision": "int8"})
    problems = cache.mismatches(rec, other)
    assert len(problems) == 4
    text = str(cache.mismatch_error("/e/llm.plan", problems, "/ckpt", "/e"))
    for part in ("TensorRT 10.3.0", "TensorRT 10.7.0", "'Orin' (compute capability 8.7)",
                 "'H100' (compute capability 9.0)", "another ONNX graph",
                 "precision='fp16' (now 'int8')", "--force-engine-update",
                 "force_engine_update:=true"):
        assert part in text
    assert len(cache.mismatches(rec, other, check_onnx=False)) == 3
    path.write_text("{not json")
    with pytest.raises(EngineError, match="unreadable"):
        cache.read_record(str(path))
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(EngineError, match="not an a2llm_ros engine sidecar"):
        cache.read_record(str(path))


def test_precision_policy_and_options():
    assert graph_precision("token2wav", "fp16") == "fp32"  # Griffin-Lim stays FP32
    assert graph_precision("llm", "int8") == "int8"
    assert graph_precision("connector_step", "int8") == "fp16"
    assert graph_precision("llm", "fp32") == "fp32"
    opts = engine_options("llm", BackendConfig(), {"profiles": {"prefill": {}}})
    assert opts["kv_io_dtype"] == "float16" and opts["fp32_norms"] and opts["tf32"]
    assert engine_options("token2wav", BackendConfig(), {})["tf32"] is False
    assert cache.bandwidth_gbs("NVIDIA Jetson Orin Nano") == 68.0
    assert cache.bandwidth_gbs("Orin") == 204.8 and cache.bandwidth_gbs("mystery") is None
    assert cache.compute_capability({"compute_capability": "8.7"}) == (8, 7)
    assert set(NEEDED["static"]) >= {"llm", "token2wav"} and "llm" not in NEEDED["dynamic"]


def test_auto_choice_rules():
    full = {"tensorrt": True, "gpu": True, "pycuda": True, "torch": True, "torch_cuda": True,
            "onnxruntime": True}
    assert choose_auto(full)[0] == "tensorrt"
    assert choose_auto({**full, "pycuda": False})[0] == "tensorrt"  # torch CUDA buffers
    kind, why = choose_auto(full, graphs=False, engines=False)
    assert kind == "torch" and "no exported ONNX graphs" in why
    assert choose_auto(full, graphs=False, engines=True)[0] == "tensorrt"
    assert choose_auto({**full, "tensorrt": False})[0] == "torch"
    cpu = {"torch": True, "onnxruntime": True}
    assert choose_auto(cpu)[0] == "onnxruntime"
    assert choose_auto(cpu, graphs=False) == ("torch", "no GPU: PyTorch on CPU; export graphs "
                                              "for ONNX Runtime (a2llm export --format onnx)")
    assert choose_auto({"torch": True})[0] == "torch"
    assert choose_auto({"onnxruntime": True})[0] == "onnxruntime"
    assert choose_auto({})[0] == "none"
    kind, reason = describe_auto()
    assert kind in ("onnxruntime", "torch", "tensorrt") and reason


def _block(monkeypatch, *names):
    real = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] in names:
            raise ImportError(f"No module named '{name}' (blocked by the test)")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_missing_tensorrt_and_pycuda_are_reported(monkeypatch, tmp_path):
    from a2llm_ros.engines import load_backend
    from a2llm_ros.engines.tensorrt_build import import_tensorrt
    from a2llm_ros.engines.device_memory import device_memory
    _block(monkeypatch, "tensorrt", "pycuda")
    with pytest.raises(EngineError, match="TensorRT is not available .*JetPack"):
        import_tensorrt()
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineError, match="needs pycuda .* or torch with CUDA"):
        device_memory(BackendConfig())
    from a2llm_ros.checkpoint import init_model, save_checkpoint
    ckpt = save_checkpoint(init_model(A2LLMConfig.preset("tiny"), seed=0), str(tmp_path / "c"))
    with pytest.raises(EngineError, match="TensorRT is not available"):
        load_backend(ckpt, BackendConfig(kind="tensorrt"))
    # auto never picks TensorRT without it
    assert describe_auto(ckpt)[0] == "torch"


def test_doctor_reports_the_same_auto_choice():
    from a2llm_ros.tools.doctor import auto_backend, backend_checks, report
    text, ok = report()
    kind, reason = auto_backend(backend_checks())
    assert f"backend 'auto' picks: {kind} ({reason})" in text and ok
    assert kind == describe_auto()[0]
