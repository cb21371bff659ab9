"""Backend configuration (:class:`BackendConfig`) and the engine error type.

Parameter names follow the Isaac ROS TensorRT node where they mean the same
thing: ``model_file_path`` (here: the directory of exported ONNX graphs),
``engine_file_path`` (here: the directory of TensorRT engines, one ``.plan``
per graph) and ``force_engine_update`` (rebuild even when a cached engine
exists; default false).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Tuple

from a2llm_ros.configbase import ConfigBase, at_least, between
from a2llm_ros.constants import MEL_FRAME_RATE, MEL_HOP, MIN_QUESTION_SECONDS, SAMPLE_RATE

KINDS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8", "fp8")
KV_MODES = ("auto", "dynamic", "static")
#: Weight-only LLM quantization of the torch backend (a2llm_ros.model.quantize).
WEIGHT_MODES = ("none", "int8", "int4")
#: Default sub-directories of a checkpoint for exported graphs and engines.
ONNX_SUBDIR, ENGINE_SUBDIR = "onnx", "tensorrt"


class EngineError(RuntimeError):
    """A backend cannot be used: missing or mismatched model/engine files, missing runtime."""


@dataclass
class BackendConfig(ConfigBase):
    """Which inference backend runs the model, and how.

    * ``kind``: ``auto`` (best available, see :func:`a2llm_ros.engines.describe_auto`),
      ``torch``, ``onnxruntime`` or ``tensorrt``.
    * ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    * ``model_file_path``: directory of the exported ONNX graphs
      (``""`` = ``<checkpoint>/onnx``).
    * ``engine_file_path``: directory of the TensorRT engines
      (``""`` = ``<checkpoint>/tensorrt``).
    * ``force_engine_update``: rebuild TensorRT engines even when cached ones exist.
    * ``precision``: TensorRT builder precision (``fp16`` default; ``int8`` / ``fp8``
      where the GPU supports them); the torch backend on CUDA uses fp16 for the
      LLM when this is ``fp16``; ONNX Runtime always runs the fp32 graphs.
    * ``kv_cache``: ``dynamic`` (prefill + decode graphs, the cache grows by one
      position per step) or ``static`` (one ``llm`` graph over a fixed-capacity
      cache of ``max_context`` positions: fixed shapes, so the decode step can be
      captured as a CUDA graph); ``auto`` = static for TensorRT, dynamic otherwise.
    * ``weights``: weight-only quantization of the LLM's linear layers in the torch
      backend (``none``, ``int8``, ``int4``; torchao, see docs/edge.md); the ONNX
      Runtime and TensorRT engines keep their own ``precision``.
    * ``max_context`` / ``opt_context``: LLM positions (prompt + answer) the engines
      are built for; ``max_question_s`` / ``opt_question_s`` bound the audio input.
    """

    kind: str = "auto"
    device: str = "auto"
    model_file_path: str = ""
    engine_file_path: str = ""
    force_engine_update: bool = False
    precision: str = "fp16"
    #: TensorRT builder workspace (MiB).
    workspace_mb: int = 2048
    #: TensorRT builder optimisation level (0-5; higher builds longer, may run faster).
    builder_optimization_level: int = 3
    #: TensorRT timing cache file (``""``: next to the engines).
    timing_cache_path: str = ""
    kv_cache: str = "auto"
    #: Capture the static-cache decode step as a CUDA graph (TensorRT).
    cuda_graph: bool = True
    max_context: int = 2048
    opt_context: int = 512
    #: Longest question the engines accept (s).
    max_question_s: float = 30.0
    #: Question length the engines are tuned for (s).
    opt_question_s: float = 5.0
    #: CPU threads of torch and ONNX Runtime.
    threads: int = 1
    #: ``torch.compile`` the LLM step in the torch backend.
    torch_compile: bool = False
    weights: str = "none"
    #: Turns run to calibrate int8/fp8 TensorRT engines.
    calibration_turns: int = 4
    #: Log the engine builders' and runtimes' details.
    verbose: bool = False

    PRESETS = {
        "tiny": dict(workspace_mb=1024, max_context=2048, opt_context=512),
        "edge": dict(workspace_mb=2048, max_context=2048, opt_context=512),
        "paper": dict(workspace_mb=4096, max_context=4096, opt_context=1024),
    }

    BOUNDS = {"workspace_mb": at_least(16), "builder_optimization_level": between(0, 5),
              "max_context": at_least(16), "opt_context": at_least(1),
              "max_question_s": at_least(MIN_QUESTION_SECONDS),
              "opt_question_s": at_least(MIN_QUESTION_SECONDS), "threads": at_least(1),
              "calibration_turns": at_least(1)}

    def __post_init__(self):
        self.check_bounds()
        bad = []
        if self.kind not in KINDS:
            bad.append(f"kind={self.kind!r} (one of {', '.join(KINDS)})")
        if self.precision not in PRECISIONS:
            bad.append(f"precision={self.precision!r} (one of {', '.join(PRECISIONS)})")
        if self.weights not in WEIGHT_MODES:
            bad.append(f"weights={self.weights!r} (one of {', '.join(WEIGHT_MODES)})")
        if self.kv_cache not in KV_MODES:
            bad.append(f"kv_cache={self.kv_cache!r} (one of {', '.join(KV_MODES)})")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            bad.append(f"device={self.device!r} (auto, cpu, cuda or cuda:N)")
        if self.opt_context > self.max_context:
            bad.append("opt_context <= max_context")
        if self.opt_question_s > self.max_question_s:
            bad.append("opt_question_s <= max_question_s")
        if bad:
            raise ValueError("BackendConfig: " + "; ".join(bad))

    # -- paths ---------------------------------------------------------------------------
    def onnx_dir(self, checkpoint_dir: str) -> str:
        """Directory of the exported ONNX graphs for ``checkpoint_dir``."""
        return self.model_file_path or os.path.join(checkpoint_dir, ONNX_SUBDIR)

    def engine_dir(self, checkpoint_dir: str) -> str:
        """Directory of the TensorRT engines for ``checkpoint_dir``."""
        return self.engine_file_path or os.path.join(checkpoint_dir, ENGINE_SUBDIR)

    def kv_mode(self, kind: str) -> str:
        """``dynamic`` or ``static`` for backend ``kind`` (resolves ``auto``)."""
        if self.kv_cache != "auto":
            return self.kv_cache
        return "static" if kind == "tensorrt" else "dynamic"

    # -- input sizes ---------------------------------------------------------------------
    def mel_frames(self) -> Tuple[int, int, int]:
        """(min, opt, max) log-mel frames of a question (100 Hz)."""
        lo = int(MIN_QUESTION_SECONDS * SAMPLE_RATE) // MEL_HOP
        return lo, int(self.opt_question_s * MEL_FRAME_RATE), \
            int(self.max_question_s * MEL_FRAME_RATE)

    def build_options(self) -> Dict[str, object]:
        """The fields that change a TensorRT engine (part of its cache key)."""
        return {"precision": self.precision, "workspace_mb": self.workspace_mb,
                "builder_optimization_level": self.builder_optimization_level,
                "max_context": self.max_context, "opt_context": self.opt_context,
                "max_question_s": self.max_question_s, "opt_question_s": self.opt_question_s}
