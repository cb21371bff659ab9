"""Weight-only LLM quantization (edge): int8 through torchao at tiny size on CPU."""
import numpy as np
import pytest
import torch

from a2llm_ros.checkpoint import init_model
from a2llm_ros.config import A2LLMConfig
from a2llm_ros.generation import GenerationConfig, StreamingGenerator
from a2llm_ros.engines.torch_backend import TorchBackend
from a2llm_ros.model.quantize import linear_weight_bytes, quantize_llm_weights

torch.set_num_threads(1)


def test_int8_weights_quarter_the_bytes_and_stay_close():
    model = init_model(A2LLMConfig.preset("tiny"), seed=0)
    before = linear_weight_bytes(model)
    x = torch.randn(1, 9, model.cfg.llm.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, _ = model.llm(x)
    quantize_llm_weights(model, "int8")
    after = linear_weight_bytes(model)
    assert after < 0.3 * before  # int8 + per-row scales vs float32
    with torch.no_grad():
        got, _ = model.llm(x)
    err = float((got - ref).abs().max() / ref.abs().max())
    assert err < 0.02, err
    # the quantized model runs the streaming generator end to end, in lockstep
    wave = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    res = StreamingGenerator(TorchBackend(model),
                             GenerationConfig(greedy=True, max_speech_tokens=10)).generate(wave)
    assert res.audio.shape[0] == 640 * len(res.speech_codes) == 640 * res.frames.shape[0]


def test_unknown_mode_is_named():
    model = init_model(A2LLMConfig.preset("tiny"), seed=0)
    with pytest.raises(ValueError, match="int8"):
        quantize_llm_weights(model, "int3")


def test_torch_backend_option_quantizes(checkpoint):
    from a2llm_ros.engines import BackendConfig, load_backend
    from a2llm_ros.model.audio_llm import base_causal_lm
    backend = load_backend(checkpoint, BackendConfig(kind="torch", device="cpu", weights="int8"))
    weight = base_causal_lm(backend.model.llm).model.layers[0].mlp.up_proj.weight
    assert type(weight).__name__ != "Parameter" and "Int8" in type(weight).__name__
    with pytest.raises(ValueError, match="weights"):
        BackendConfig(weights="int2")
