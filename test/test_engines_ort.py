"""ONNX Runtime backend: whole turns equal PyTorch's (greedy), one Backend interface."""
import os
import shutil

import numpy as np
import pytest
import torch

from a2llm_ros.tools.bench.core import synthetic_question
from a2llm_ros.checkpoint import init_model, save_checkpoint
from a2llm_ros.config import A2LLMConfig
from a2llm_ros.engines import BackendConfig, EngineError, describe_auto, load_backend
from a2llm_ros.engines.model_info import ModelInfo
from a2llm_ros.tools.export.exporter import export_onnx
from a2llm_ros.tools.export.parity import spectral_error
from a2llm_ros.generation import AudioEvent, FlameEvent, GenerationConfig, StreamingGenerator
from a2llm_ros.engines.torch_backend import TorchBackend
from conftest import trained_refiner

torch.set_num_threads(1)
QUESTION = synthetic_question(1.5)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ort")
    model = init_model(A2LLMConfig.preset("tiny"), seed=2)
    trained_refiner(model)
    path = save_checkpoint(model, str(root / "ckpt"))
    export_onnx(model, os.path.join(path, "onnx"), BackendConfig.preset("tiny"), verify=False,
                checkpoint_dir=path, log=lambda s: None)
    return path, model


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
def test_greedy_whole_turn_equals_pytorch_token_for_token(ckpt, kv_cache):
    path, model = ckpt
    cfg = GenerationConfig(greedy=True, max_speech_tokens=40, min_speech_tokens=40)
    ref = StreamingGenerator(TorchBackend(model), cfg).generate(QUESTION)
    backend = load_backend(path, BackendConfig(kind="onnxruntime", kv_cache=kv_cache))
    assert backend.kind == "onnxruntime" and backend.kv_mode == kv_cache
    res = StreamingGenerator(backend, cfg).generate(QUESTION)
    assert res.text_ids == ref.text_ids and res.text == ref.text
    assert res.speech_codes == ref.speech_codes and len(res.speech_codes) == 40
    assert res.end_reason == ref.end_reason
    np.testing.assert_allclose(res.frames, ref.frames, atol=1e-4)
    # Griffin-Lim audio: same length, same target spectrum (the waveform is chaotic)
    assert res.audio.shape == ref.audio.shape and np.isfinite(res.audio).all()
    err_ort = spectral_error(model, res.audio, res.speech_codes)
    err_torch = spectral_error(model, ref.audio, ref.speech_codes)
    assert err_ort <= 1.5 * err_torch + 0.05
    kinds = [type(e).__name__ for e in res.events]
    assert kinds == [type(e).__name__ for e in ref.events]
    # the prefill's tail (end-of-turn head input): the last audio position and the template
    tails = []
    for b in (TorchBackend(model), backend):
        gen = StreamingGenerator(b, cfg)
        gen.start(QUESTION)
        tails.append(gen.prompt_hidden)
        gen.cancel()
    assert tails[0].shape == (model.prompt(1).tail, model.cfg.llm.hidden_size)
    np.testing.assert_allclose(tails[1], tails[0], atol=1e-4)


def test_sampled_turn_is_reproducible_and_lockstep(ckpt):
    path, _ = ckpt
    backend = load_backend(path, BackendConfig(kind="onnxruntime"))
    cfg = GenerationConfig(seed=5, temperature=1.0, top_k=20, max_speech_tokens=23,
                           motion_temperature=1.0, motion_top_k=8)
    a = StreamingGenerator(backend, cfg).generate(QUESTION)
    b = StreamingGenerator(backend, cfg).generate(QUESTION)
    assert a.speech_codes == b.speech_codes and np.array_equal(a.frames, b.frames)
    assert a.frames.shape[0] == len(a.speech_codes)  # 25 fps frames == 25 Hz tokens
    n_audio = n_frames = 0
    for e in a.events:
        if isinstance(e, AudioEvent):
            assert e.start_sample == n_audio
            n_audio += e.samples.shape[0]
        if isinstance(e, FlameEvent):
            n_frames += e.frames.shape[0]
            assert n_frames * 640 <= n_audio
    assert n_audio == 640 * len(a.speech_codes)


def test_cancel_and_restart(ckpt):
    path, _ = ckpt
    gen = StreamingGenerator(load_backend(path, BackendConfig(kind="onnxruntime")),
                             GenerationConfig(greedy=True, max_speech_tokens=10))
    gen.start(QUESTION)
    for _ in range(7):
        gen.step()
    assert gen.cancel()[0].reason == "cancel"
    assert gen.generate(QUESTION).end_reason in ("eos", "cap")


def test_model_info_stands_in_for_the_model(ckpt):
    path, model = ckpt
    info = ModelInfo(path)
    assert info.cfg.to_dict() == model.cfg.to_dict()
    assert info.vocab == model.vocab and info.layout.dim == 58
    assert info.prompt(7) == model.prompt(7)  # the generator builds the prompt from it
    np.testing.assert_allclose(info.log_mel(QUESTION), model.log_mel(QUESTION).numpy(), atol=1e-4)
    assert info.text_tokenizer.decode([40, 41]) == model.text_tokenizer.decode([40, 41])
    # the codec's rates (its decoder is the token2wav graph)
    assert info.token2wav.sample_rate == model.token2wav.sample_rate
    assert info.token2wav.samples_per_token == model.token2wav.samples_per_token


def test_auto_and_contract(ckpt, tmp_path):
    path, _ = ckpt
    kind, reason = describe_auto(path)
    assert (kind, "ONNX Runtime" in reason) == ("onnxruntime", True)  # CPU with graphs
    backend = load_backend(path, BackendConfig(kind="auto"))
    assert backend.kind == "onnxruntime" and backend.selection_reason == reason
    torch_backend = load_backend(path, BackendConfig(kind="torch", device="cpu"))
    assert isinstance(torch_backend, TorchBackend) and torch_backend.kind == "torch"
    # a checkpoint without exported graphs: auto falls back to torch
    bare = str(tmp_path / "bare")
    shutil.copytree(path, bare, ignore=shutil.ignore_patterns("onnx"))
    assert describe_auto(bare)[0] == "torch"
    with pytest.raises(EngineError, match="a2llm export --checkpoint .* --format onnx"):
        load_backend(bare, BackendConfig(kind="onnxruntime"))
    with pytest.raises(EngineError, match="checkpoint directory not found"):
        load_backend(str(tmp_path / "nope"), BackendConfig(kind="onnxruntime"))


def test_torch_backend_options(ckpt):
    from a2llm_ros.model.audio_llm import base_causal_lm
    path, _ = ckpt
    backend = load_backend(path, BackendConfig(kind="torch", device="cpu", torch_compile=True))
    # compiled lazily on the first call (minutes on a small CPU), so only the wrapping here:
    # nn.Module.compile() routes the decoder's __call__ through torch.compile
    assert base_causal_lm(backend.model.llm)._compiled_call_impl is not None
    with pytest.raises(EngineError, match="no CUDA device"):
        if not torch.cuda.is_available():
            load_backend(path, BackendConfig(kind="torch", device="cuda"))
        else:
            raise EngineError("no CUDA device (skipped: this machine has one)")


def test_graphs_of_another_checkpoint_are_refused(ckpt, tmp_path):
    path, _ = ckpt
    other = save_checkpoint(init_model(A2LLMConfig.preset("tiny"), seed=9), str(tmp_path / "o"))
    cfg = BackendConfig(kind="onnxruntime", model_file_path=os.path.join(path, "onnx"))
    with pytest.raises(EngineError, match="exported from another checkpoint .*weights"):
        load_backend(other, cfg)
    broken = str(tmp_path / "broken")
    shutil.copytree(os.path.join(path, "onnx"), broken)
    os.remove(os.path.join(broken, "llm_decode.onnx"))
    with pytest.raises(EngineError, match="lacks the graphs llm_decode"):
        load_backend(path, BackendConfig(kind="onnxruntime", model_file_path=broken))


TORCH_BLOCKED_TURN = """
import importlib.machinery, json, sys


class NoTorch:  # the path finder, except that torch is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

    def invalidate_caches(self):
        importlib.machinery.PathFinder.invalidate_caches()

    def find_distributions(self, *args, **kwargs):
        return importlib.machinery.PathFinder.find_distributions(*args, **kwargs)


sys.meta_path = [NoTorch() if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
from a2llm_ros.audio.signals import synthetic_question
from a2llm_ros.engines import BackendConfig, load_backend
from a2llm_ros.generation import GenerationConfig, StreamingGenerator
backend = load_backend(sys.argv[1], BackendConfig(kind="onnxruntime"))
res = StreamingGenerator(backend, GenerationConfig(greedy=True, max_speech_tokens=12,
                                                   min_speech_tokens=12)).generate(
    synthetic_question(1.5))
print(json.dumps({"codes": res.speech_codes, "n_audio": int(res.audio.shape[0]),
                  "frames": res.frames.tolist(),
                  "torch": [m for m in sys.modules if m.split(".")[0] == "torch"]}))
"""


def test_onnxruntime_turn_runs_without_torch(ckpt):
    """A whole ONNX Runtime turn (load, log-mel, prefill, decode, motion, codec) in a process
    where importing torch fails: the same answer as PyTorch's."""
    import json
    import subprocess
    import sys
    path, model = ckpt
    out = subprocess.run([sys.executable, "-c", TORCH_BLOCKED_TURN, path], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ref = StreamingGenerator(TorchBackend(model), GenerationConfig(
        greedy=True, max_speech_tokens=12, min_speech_tokens=12)).generate(
        synthetic_question(1.5))
    assert got["torch"] == []
    assert got["codes"] == ref.speech_codes and got["n_audio"] == ref.audio.shape[0]
    np.testing.assert_allclose(np.asarray(got["frames"]), ref.frames, atol=1e-4)


@pytest.mark.parametrize("cfg, full", [
    (GenerationConfig(greedy=True, max_speech_tokens=10), False),
    (GenerationConfig(seed=3, temperature=0.9, top_k=50, max_speech_tokens=10), False),
    (GenerationConfig(seed=3, temperature=0.9, top_k=0, max_speech_tokens=10), True)])
def test_llm_steps_bring_only_the_top_tokens_to_the_host(ckpt, cfg, full):
    """The LLM graphs mask and rank in-graph: a step fetches ``top_values`` / ``top_ids``
    (64 each) and the hidden state, the whole logits only when the pick's top-k exceeds 64;
    the prefill also the hidden states of the prompt's tail (end-of-turn head)."""
    path, _ = ckpt
    backend = load_backend(path, BackendConfig(kind="onnxruntime"))
    fetched = []
    inner = backend.runner.run

    def spy(graph, feeds, profile=None, host=()):
        if graph.startswith("llm"):
            fetched.append(tuple(host))
        return inner(graph, feeds, profile, host)

    backend.runner.run = spy
    res = StreamingGenerator(backend, cfg).generate(QUESTION)
    assert len(fetched) >= len(res.speech_codes) > 0
    assert all(("logits" in h) == full for h in fetched)
    assert all(("top_ids" in h) != full for h in fetched)
    assert ["tail" in h for h in fetched] == [True] + [False] * (len(fetched) - 1)


def test_model_info_refuses_a_codec_the_graphs_do_not_cover(ckpt, tmp_path):
    """A checkpoint with Step-Audio-2's token2wav codec runs in PyTorch only: the engine
    backends' ModelInfo says so by name instead of loading half a model."""
    import json
    from a2llm_ros.model.configs import SpeechCodecConfig
    path, _ = ckpt
    copy = str(tmp_path / "step_codec")
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns("onnx"))
    meta_path = os.path.join(copy, "config.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["config"]["codec"] = SpeechCodecConfig.step().to_dict()
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(EngineError, match="kmeans_mel speech codec only.*step_token2wav.*torch"):
        ModelInfo(copy)
