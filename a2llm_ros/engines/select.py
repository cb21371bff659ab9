"""Backend selection: what is available, what ``auto`` picks and why, and loading.

``auto`` prefers, in order:

1. ``tensorrt`` -- TensorRT imports, a CUDA GPU is visible and device buffers
   can be made (pycuda, or torch with CUDA); with a checkpoint, it also needs
   its exported ONNX graphs or built engines;
2. ``torch`` on CUDA -- a GPU without TensorRT;
3. ``onnxruntime`` on CPU -- no GPU and onnxruntime installed (it decodes the
   tiny model ~3x faster than PyTorch on CPU, see docs/engines.md); with a
   checkpoint, only when its ONNX graphs are exported;
4. ``torch`` on CPU.
"""
from __future__ import annotations

import importlib
import os
from typing import Dict, Optional, Tuple

from a2llm_ros.engines.config import BackendConfig, EngineError

#: Module names probed for availability.
PROBES = {"torch": "torch", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt",
          "pycuda": "pycuda.driver"}


def _probe(module: str) -> Tuple[Optional[object], str]:
    try:
        return importlib.import_module(module), ""
    except Exception as exc:  # ImportError, OSError from missing shared libraries
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]


def availability() -> Dict[str, object]:
    """Flags and details of every backend ingredient (``<name>`` bool, ``<name>_detail``)."""
    state: Dict[str, object] = {}
    mods = {}
    for key, module in PROBES.items():
        mods[key], err = _probe(module)
        state[key] = mods[key] is not None
        state[key + "_detail"] = getattr(mods[key], "__version__", "present") if mods[key] \
            else err
    torch = mods["torch"]
    state["torch_cuda"] = bool(torch is not None and torch.cuda.is_available())
    ort = mods["onnxruntime"]
    providers = ort.get_available_providers() if ort is not None else []
    state["ort_cuda"] = "CUDAExecutionProvider" in providers
    from a2llm_ros.engines.cache import gpu_info
    gpu = gpu_info() if (state["torch_cuda"] or state["pycuda"] or state["tensorrt"]) else None
    state["gpu"] = gpu is not None
    state["gpu_detail"] = f"{gpu['name']} (compute capability {gpu['compute_capability']})" \
        if gpu else "no CUDA GPU"
    return state


def choose_auto(state: Dict[str, object], graphs: Optional[bool] = None,
                engines: Optional[bool] = None) -> Tuple[str, str]:
    """What ``auto`` picks for availability ``state``; ``graphs`` / ``engines``: whether the
    checkpoint has exported ONNX graphs / built engines (None = no checkpoint given)."""
    gpu = bool(state.get("gpu") or state.get("torch_cuda"))
    buffers = bool(state.get("pycuda") or state.get("torch_cuda"))
    skipped = []
    if state.get("tensorrt") and gpu and buffers:
        if graphs is None:
            return "tensorrt", ("TensorRT, a CUDA GPU and device buffers (pycuda or torch CUDA) "
                                "are present (engines are built from the exported ONNX graphs)")
        if graphs or engines:
            return "tensorrt", "TensorRT and a CUDA GPU are present and the checkpoint has " \
                               "exported graphs/engines"
        skipped.append("TensorRT present but the checkpoint has no exported ONNX graphs "
                       "(a2llm export --format tensorrt)")
    elif state.get("tensorrt") and not gpu:
        skipped.append("TensorRT present but no CUDA GPU")
    elif state.get("tensorrt") and not buffers:
        skipped.append("TensorRT present but neither pycuda nor torch CUDA for its buffers")
    note = f" ({'; '.join(skipped)})" if skipped else ""
    if state.get("torch_cuda"):
        return "torch", "CUDA GPU without usable TensorRT: PyTorch on CUDA" + note
    if state.get("onnxruntime") and graphs is not False:
        why = "no GPU: ONNX Runtime on CPU (faster than PyTorch on CPU)"
        if graphs is None:
            why += "; needs the exported graphs (a2llm export --format onnx), else torch"
        return "onnxruntime", why + note
    if state.get("torch"):
        extra = "; export graphs for ONNX Runtime (a2llm export --format onnx)" \
            if state.get("onnxruntime") else ""
        return "torch", "no GPU: PyTorch on CPU" + extra + note
    if state.get("onnxruntime"):
        return "onnxruntime", "torch missing: ONNX Runtime on CPU" + note
    return "none", "no inference backend importable" + note


def _artifacts(checkpoint_dir: str, cfg: BackendConfig) -> Tuple[bool, bool]:
    from a2llm_ros.engines.manifest import MANIFEST
    graphs = os.path.isfile(os.path.join(cfg.onnx_dir(checkpoint_dir), MANIFEST))
    engines = os.path.isfile(os.path.join(cfg.engine_dir(checkpoint_dir), MANIFEST))
    return graphs, engines


def describe_auto(checkpoint_dir: Optional[str] = None,
                  cfg: Optional[BackendConfig] = None) -> Tuple[str, str]:
    """(kind, reason): what ``kind: auto`` resolves to here (for ``checkpoint_dir`` if given)."""
    graphs = engines = None
    if checkpoint_dir is not None:
        from a2llm_ros.checkpoint_files import resolve_checkpoint
        checkpoint_dir = resolve_checkpoint(checkpoint_dir)
        graphs, engines = _artifacts(checkpoint_dir, cfg or BackendConfig())
    return choose_auto(availability(), graphs, engines)


def load_torch_backend(checkpoint_dir: str, cfg: BackendConfig):
    """PyTorch backend: the checkpoint on ``cfg.device``; fp16 LLM on CUDA when
    ``precision`` is fp16; weight-only int8/int4 LLM when ``weights`` says so; the LLM
    backbone compiled (``torch.compile``) on request."""
    import torch

    from a2llm_ros.checkpoint import load_checkpoint
    from a2llm_ros.engines.torch_backend import TorchBackend
    from a2llm_ros.model.audio_llm import base_causal_lm
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} asked for but torch has no CUDA device")
    if device == "cpu":
        torch.set_num_threads(cfg.threads)
    model = load_checkpoint(checkpoint_dir, device=device)
    if device.startswith("cuda") and cfg.precision == "fp16":
        model.llm.half()
    if cfg.weights != "none":
        from a2llm_ros.model.quantize import quantize_llm_weights
        try:
            quantize_llm_weights(model, cfg.weights)
        except RuntimeError as exc:
            raise EngineError(str(exc)) from exc
    if cfg.torch_compile:  # the whole decoder forward (Qwen2LM.__call__), compiled in place
        base_causal_lm(model.llm).compile(dynamic=True)
    backend = TorchBackend(model)
    return backend


def load_backend(checkpoint_dir: str, cfg: Optional[BackendConfig] = None):
    """The :class:`~a2llm_ros.generation.Backend` for ``checkpoint_dir`` and ``cfg``.

    ``cfg.kind == "auto"`` resolves as :func:`describe_auto`.  Raises
    :class:`EngineError` for a missing or mismatched model/engine file or a
    missing runtime.
    """
    from a2llm_ros.checkpoint_files import resolve_checkpoint
    cfg = cfg or BackendConfig()
    try:
        checkpoint_dir = resolve_checkpoint(checkpoint_dir)
    except FileNotFoundError as exc:
        raise EngineError(str(exc)) from exc
    kind, reason = cfg.kind, "asked for by name"
    if kind == "auto":
        kind, reason = describe_auto(checkpoint_dir, cfg)
        if kind == "none":
            raise EngineError(f"no inference backend available: {reason}")
    if kind == "torch":
        backend = load_torch_backend(checkpoint_dir, cfg)
    elif kind == "onnxruntime":
        from a2llm_ros.engines.ort_backend import load_ort_backend
        backend = load_ort_backend(checkpoint_dir, cfg)
    elif kind == "tensorrt":
        from a2llm_ros.engines.tensorrt_runtime import load_trt_backend
        backend = load_trt_backend(checkpoint_dir, cfg)
    else:
        raise EngineError(f"unknown backend kind {kind!r}")
    backend.selection_reason = reason
    return backend
