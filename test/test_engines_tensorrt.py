"""TensorRT build and runtime code paths, run against a TensorRT stand-in (no GPU here).

``engines_fake_tensorrt`` mimics the TensorRT 10 Python API and executes the
engines' ONNX graphs with ONNX Runtime on NumPy "device" memory, so the real
builder code (flags, profiles, KV I/O dtypes, FP32 norm layers, timing cache,
progress monitor, INT8 calibration) and runtime code (contexts per profile,
buffers, ping-pong outputs, stale-state detection, CUDA-graph capture and
replay, engine cache validation) run end to end.  The tests at the bottom
need the real TensorRT and a GPU and are skipped here with the reason.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import engines_fake_tensorrt as fake
from a2llm_ros.tools.bench.core import synthetic_question
from a2llm_ros.checkpoint import init_model, save_checkpoint
from a2llm_ros.config import A2LLMConfig
from a2llm_ros.engines import BackendConfig, EngineError
from a2llm_ros.engines import cache
from a2llm_ros.tools.export.graphs import prompt_overhead
from a2llm_ros.engines.model_info import ModelInfo
from a2llm_ros.tools.export.exporter import export_onnx
from a2llm_ros.engines.torch_backend import TorchBackend
from a2llm_ros.generation import GenerationConfig, StreamingGenerator

torch.set_num_threads(1)
GPU = {"name": "Fake Orin", "compute_capability": "8.7", "total_memory_mb": 8192}
QUESTION = synthetic_question(1.2)
GEN = GenerationConfig(greedy=True, max_speech_tokens=12, min_speech_tokens=12,
                       max_text_tokens=8)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt")
    model = init_model(A2LLMConfig.preset("tiny"), seed=3)
    path = save_checkpoint(model, str(root / "ckpt"))
    export_onnx(model, os.path.join(path, "onnx"), BackendConfig(max_context=256,
                                                                 opt_context=64,
                                                                 max_question_s=4.0,
                                                                 opt_question_s=1.2),
                graphs=["audio_encoder", "token_embed", "llm", "connector_step",
                        "motion_decoder", "token2wav"], verify=False, checkpoint_dir=path,
                log=lambda s: None)
    reference = StreamingGenerator(TorchBackend(model), GEN).generate(QUESTION)
    return path, reference


def _cfg(ckpt_dir, **kw):
    values = dict(kind="tensorrt", max_context=256, opt_context=64, max_question_s=4.0,
                  opt_question_s=1.2, engine_file_path=os.path.join(ckpt_dir, "engines"))
    values.update(kw)
    return BackendConfig(**values)


@pytest.fixture
def trt(monkeypatch):
    module = fake.install(monkeypatch)
    monkeypatch.setattr(cache, "gpu_info", lambda index=0: dict(GPU))
    return module


def _load(ckpt_dir, cfg, graphs=None, logs=None):
    from a2llm_ros.engines.tensorrt_runtime import load_trt_backend
    return load_trt_backend(ckpt_dir, cfg, memory=fake.FakeMemory(),
                            graphs=graphs or fake.FakeGraphs(),
                            log=(logs.append if logs is not None else lambda s: None))


def test_build_records_options_profiles_and_cache(ckpt, trt, capsys):
    from a2llm_ros.engines.tensorrt_build import build_engines
    path, _ = ckpt
    cfg = _cfg(path, engine_file_path=os.path.join(path, "engines_build"))
    plans = build_engines(path, cfg, ["llm", "token2wav", "token_embed"])
    out = capsys.readouterr().out
    assert "[llm] Building engine (2 steps)" in out and "done in" in out  # IProgressMonitor
    built = {os.path.basename(p["onnx"]): p for p in fake.Builder.built}
    llm = built["llm.onnx"]
    assert "FP16" in llm["flags"] and "PREFER_PRECISION_CONSTRAINTS" in llm["flags"]
    assert llm["fp32_layers"] > 0  # RMSNorm layers pinned to FP32
    assert llm["inputs"]["past_kv"] == "float16" and llm["outputs"]["present_kv"] == "float16"
    assert llm["workspace"] == cfg.workspace_mb << 20
    prefill, decode = llm["profiles"]
    extra = prompt_overhead(ModelInfo(path))  # chat-format positions besides the audio
    assert prefill["inputs_embeds"][0] == [1, extra + 1, 256]  # 0.1 s -> 1 audio position
    assert prefill["inputs_embeds"][2] == [1, extra + 50, 256]  # 4 s -> 50 audio positions
    assert decode["inputs_embeds"] == [[1, 1, 256]] * 3
    t2w = built["token2wav.onnx"]
    assert "FP16" not in t2w["flags"] and "TF32" not in t2w["flags"]  # ill-conditioned GL
    assert [p["ids"] for p in built["token_embed.onnx"]["profiles"]] == \
        [[[1, 1], [1, 2], [1, 64]], [[1, 1]] * 3]
    record = cache.read_record(plans["llm"] + ".json")
    assert record["gpu"] == {"name": "Fake Orin", "compute_capability": "8.7"}
    assert record["tensorrt_version"] == fake.VERSION
    assert record["io"]["profile_names"] == ["prefill", "decode"]
    assert record["build_options"]["precision"] == "fp16"
    assert cache.read_record(plans["token2wav"] + ".json")["build_options"]["precision"] == "fp32"
    with open(os.path.join(cfg.engine_dir(path), "timing.cache"), "rb") as f:
        assert f.read().endswith(b"+timing")
    # a second call reuses the cached engines (nothing rebuilt)
    n = len(fake.Builder.built)
    build_engines(path, cfg, ["llm", "token2wav", "token_embed"])
    assert len(fake.Builder.built) == n


def test_whole_turn_on_tensorrt_runtime_equals_torch(ckpt, trt):
    path, ref = ckpt
    logs = []
    graphs = fake.FakeGraphs()
    backend = _load(path, _cfg(path), graphs, logs)
    assert backend.kind == "tensorrt" and backend.kv_mode == "static"
    res = StreamingGenerator(backend, GEN).generate(QUESTION)
    assert res.text_ids == ref.text_ids and res.speech_codes == ref.speech_codes
    assert res.end_reason == ref.end_reason
    np.testing.assert_allclose(res.frames, ref.frames, atol=1e-4)
    assert res.audio.shape == ref.audio.shape and np.isfinite(res.audio).all()
    # the fixed-shape engines ran from captured CUDA graphs
    assert graphs.captures > 0 and graphs.replays > graphs.captures
    llm = backend.runner.engines["llm"]
    assert llm.contexts["decode"].graphs and not llm.contexts["prefill"].graphs
    # a second turn on the same backend gives the same answer (buffers reused safely)
    again = StreamingGenerator(backend, GEN).generate(QUESTION)
    assert again.speech_codes == ref.speech_codes


def test_stale_state_and_profile_limits(ckpt, trt):
    path, _ = ckpt
    backend = _load(path, _cfg(path, cuda_graph=False))
    prompt = torch.randn(1, prompt_overhead(backend.model) + 2, 256).numpy()  # in "prefill"
    _, _, kv0 = backend.llm_prefill(prompt)
    _, _, kv1 = backend.llm_decode(5, kv0)
    _, _, kv2 = backend.llm_decode(6, kv1)
    _, _, kv3 = backend.llm_decode(7, kv2)  # overwrites kv1's buffer (ping-pong)
    with pytest.raises(EngineError, match="stale"):
        backend.llm_decode(8, kv1)
    backend.llm_decode(8, kv3)
    with pytest.raises(EngineError, match="context full"):
        backend.llm_prefill(torch.randn(1, 300, 256).numpy())
    with pytest.raises(EngineError, match="exceeds"):
        backend.encode_audio(torch.randn(80, 500).numpy())  # 5 s > max_question_s = 4 s


def test_mismatched_engine_is_refused_with_rebuild_hint(ckpt, trt):
    path, _ = ckpt
    cfg = _cfg(path, engine_file_path=os.path.join(path, "engines_mismatch"))
    _load(path, cfg)
    side = os.path.join(cfg.engine_dir(path), "llm.plan.json")
    with open(side) as f:
        record = json.load(f)
    record["tensorrt_version"] = "8.6.1"
    record["gpu"] = {"name": "NVIDIA H100", "compute_capability": "9.0"}
    with open(side, "w") as f:
        json.dump(record, f)
    with pytest.raises(EngineError) as err:
        _load(path, cfg)
    msg = str(err.value)
    assert "TensorRT 8.6.1" in msg and fake.VERSION in msg
    assert "NVIDIA H100" in msg and "Fake Orin" in msg and "8.7" in msg
    assert "--force-engine-update" in msg and "force_engine_update:=true" in msg
    # other build options are a mismatch too
    with pytest.raises(EngineError, match="workspace_mb"):
        _load(path, BackendConfig(**{**cfg.to_dict(), "workspace_mb": 64}))
    # force_engine_update rebuilds and the engine loads again
    n = len(fake.Builder.built)
    _load(path, BackendConfig(**{**cfg.to_dict(), "force_engine_update": True}))
    assert len(fake.Builder.built) > n
    assert cache.read_record(side)["tensorrt_version"] == fake.VERSION


def test_changed_onnx_invalidates_engine(ckpt, trt, tmp_path):
    path, _ = ckpt
    cfg = _cfg(path, engine_file_path=str(tmp_path / "eng"))
    _load(path, cfg)
    side = os.path.join(cfg.engine_dir(path), "motion_decoder.plan.json")
    with open(side) as f:
        record = json.load(f)
    record["onnx_sha256"] = "0" * 64
    with open(side, "w") as f:
        json.dump(record, f)
    with pytest.raises(EngineError, match="another ONNX graph"):
        _load(path, cfg)


def test_engines_without_onnx_graphs_still_load(ckpt, trt, tmp_path):
    path, ref = ckpt
    copy = str(tmp_path / "ckpt")
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns("engines*"))
    cfg = _cfg(copy)
    _load(copy, cfg)  # builds the engines from <copy>/onnx
    shutil.rmtree(os.path.join(copy, "onnx"))  # deploy engines only
    backend = _load(copy, cfg)
    res = StreamingGenerator(backend, GEN).generate(QUESTION)
    assert res.speech_codes == ref.speech_codes


def test_int8_calibration_and_precision_support(ckpt, trt, monkeypatch, tmp_path):
    import a2llm_ros.engines.device_memory as dm
    import a2llm_ros.engines.tensorrt_runtime as rt
    from a2llm_ros.engines import tensorrt_build as tb
    path, _ = ckpt
    for module in (dm, rt):  # the calibrator's buffers (builder) and the runtime's
        monkeypatch.setattr(module, "device_memory", lambda cfg: fake.FakeMemory())
    cfg = _cfg(path, precision="int8", calibration_turns=1,
               engine_file_path=str(tmp_path / "int8"))
    plans = tb.build_engines(path, cfg, ["audio_encoder", "connector_step", "llm"],
                             log=lambda s: None)
    built = {os.path.basename(p["onnx"]): p for p in fake.Builder.built}
    for graph in ("audio_encoder.onnx", "llm.onnx"):  # batches checked against FP16 KV I/O
        assert "INT8" in built[graph]["flags"] and built[graph]["calibration_batches"] > 0
    assert os.path.isfile(os.path.join(str(tmp_path / "int8"), "audio_encoder.calib"))
    conn = cache.read_record(plans["connector_step"] + ".json")
    assert conn["build_options"]["precision"] == "fp16"  # small graphs stay FP16
    fp8 = _cfg(path, precision="fp8", engine_file_path=str(tmp_path / "fp8"))
    with pytest.raises(EngineError, match="fp8 needs compute capability >= 8.9"):
        tb.build_engines(path, fp8, ["llm"])  # Orin (8.7) has no FP8
    monkeypatch.setattr(cache, "gpu_info", lambda index=0: {"name": "H100",
                                                            "compute_capability": "9.0"})
    with pytest.raises(EngineError, match="fp8 needs an explicitly quantised"):
        tb.build_engines(path, fp8, ["llm"])
    with pytest.raises(EngineError, match="compute capability >= 6.1"):
        tb.check_precision("int8", {"name": "Old GPU", "compute_capability": "5.3"})
    tb.check_precision("fp8", {"name": "H100", "compute_capability": "9.0"})


def test_cuda_graph_capture_failure_falls_back(ckpt, trt):
    path, ref = ckpt

    class Broken(fake.FakeGraphs):
        def capture(self, launch):
            raise RuntimeError("operation not permitted when stream is capturing")

    logs = []
    backend = _load(path, _cfg(path), Broken(), logs)
    res = StreamingGenerator(backend, GEN).generate(QUESTION)
    assert res.speech_codes == ref.speech_codes
    assert any("running without CUDA graphs" in line for line in logs)


# ----------------------------------------------------------------------------- real TensorRT

def _has_tensorrt_gpu():
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        return f"TensorRT not installed ({type(exc).__name__})"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return ""


REASON = _has_tensorrt_gpu()


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(bool(REASON), reason=f"needs TensorRT and a GPU: {REASON}")
def test_real_tensorrt_whole_turn(ckpt):
    path, ref = ckpt
    from a2llm_ros.engines import load_backend
    backend = load_backend(path, _cfg(path, engine_file_path=os.path.join(path, "real")))
    res = StreamingGenerator(backend, GEN).generate(QUESTION)
    # fp16 engines: the answer's first tokens agree with PyTorch's greedy ones
    assert res.speech_codes[:4] == ref.speech_codes[:4]
    assert res.frames.shape == ref.frames.shape and np.isfinite(res.audio).all()
