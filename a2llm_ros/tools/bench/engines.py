"""Backend benchmark behind ``a2llm bench --backends ...``.

Every backend answers the same synthetic question with exactly
``speech_tokens`` speech tokens (``min_speech_tokens = max_speech_tokens``)
through the same :class:`~a2llm_ros.generation.StreamingGenerator`; the
backend is wrapped so that every call is timed.  Reported per backend:

* per-component latency (ms): ``prefill`` (the whole question: log-mel, audio
  encoder, embeddings, LLM prefill, first token), within it ``encode_audio`` and
  ``llm_prefill``; ``decode`` (one LLM step with the KV cache and the token's
  sampling), within it ``llm_decode``; ``motion_step`` (Motion Connector + RVQ-VAE
  decoder, 5 frames); ``codec_step`` (one 5-token chunk of token2wav);
* ``decode_steps_per_s`` = 1000 / mean decode ms; ``tokens_per_s`` = answer
  tokens per second of generation (every step, vocoder and motion included);
* ``ttft_ms``: question end (``start``) -> first text token ready;
  ``ttfa_ms``: question end -> first FLAME frame ready (the avatar's first
  motion; it follows the first 200 ms of audio); ``ttf_audio_ms``: -> first
  audio chunk ready;
* ``rtf``: generation time / answer audio duration;
* ``peak_rss_mb`` (process peak, each backend in its own process unless
  ``isolate=False``) and, on CUDA, ``gpu_mem_mb``;
* on CUDA, ``bandwidth_fraction`` = decode weight bytes x decode steps/s /
  device memory bandwidth (how close decode is to the memory-bandwidth bound).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

from a2llm_ros.tools.bench.core import (TIMED, TimedBackend, _stats, machine_info, run_once,
                                        synthetic_question)
from a2llm_ros.constants import SAMPLE_RATE, SAMPLES_PER_SPEECH_TOKEN
from a2llm_ros.engines.config import BackendConfig, EngineError
from a2llm_ros.generation import GenerationConfig, StreamingGenerator

#: Bytes per weight of each backend / precision (decode bandwidth estimate).
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "fp8": 1.0}
#: Metrics of the side-by-side table: (key, label, higher is better).
TABLE = (("encode_audio_ms", "encode_audio ms", False),
         ("llm_prefill_ms", "LLM prefill ms", False),
         ("decode_ms", "LLM decode step ms", False),
         ("motion_step_ms", "connector+RVQ ms", False),
         ("codec_step_ms", "token2wav chunk ms", False),
         ("decode_steps_per_s", "decode steps/s", True), ("tokens_per_s", "tokens/s (turn)", True),
         ("ttft_ms", "TTFT ms", False), ("ttfa_ms", "TTFA ms (1st FLAME)", False),
         ("ttf_audio_ms", "1st audio ms", False), ("rtf", "RTF", False),
         ("peak_rss_mb", "peak RSS MiB", False), ("gpu_mem_mb", "GPU memory MiB", False),
         ("bandwidth_fraction", "decode BW fraction", True))


def _rss_mb() -> float:
    """Peak resident set size of this process (MiB): ``VmHWM`` of /proc/self/status where
    there is one (``ru_maxrss`` survives ``exec`` on Linux, so a child would report its
    parent's peak), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cuda_device(backend) -> Optional[str]:
    kind = getattr(backend, "kind", "torch")
    if kind == "tensorrt":
        return "cuda"
    if kind == "onnxruntime":
        return "cuda" if "CUDA" in getattr(backend.runner, "provider_desc", "") else None
    dev = getattr(backend.model, "device", None)
    return "cuda" if dev is not None and str(dev).startswith("cuda") else None


def _weight_bytes(backend, kind: str, cfg: BackendConfig) -> Optional[float]:
    manifest = getattr(backend, "manifest", None)
    if manifest and manifest.get("decode_weight_bytes_fp32"):
        params = manifest["decode_weight_bytes_fp32"] / 4.0
    else:
        from a2llm_ros.tools.export.onnx_export import decode_weight_bytes
        params = decode_weight_bytes(backend.model, 1.0)
    if kind == "tensorrt":
        per = BYTES_PER_WEIGHT[cfg.precision]
    elif kind == "torch":
        import torch
        from a2llm_ros.model.audio_llm import base_causal_lm
        dtype = base_causal_lm(backend.model.llm).lm_head.weight.dtype
        per = float(torch.finfo(dtype).bits // 8)
    else:
        per = 4.0
    return params * per


def bench_backend(kind: str, checkpoint: str, cfg: BackendConfig, wave: np.ndarray,
                  speech_tokens: int = 75, runs: int = 3, warmup: int = 1, seed: int = 0,
                  bandwidth_gbs: Optional[float] = None) -> dict:
    """Benchmark one backend in this process; returns its result dict."""
    from a2llm_ros.engines import load_backend
    cfg = BackendConfig.from_dict({**cfg.to_dict(), "kind": kind})
    gpu_free0 = _gpu_free()
    t0 = time.perf_counter()
    backend = load_backend(checkpoint, cfg)
    load_s = time.perf_counter() - t0
    timed = TimedBackend(backend)
    gen = StreamingGenerator(timed, GenerationConfig(
        max_speech_tokens=speech_tokens, min_speech_tokens=speech_tokens, seed=seed))
    for _ in range(warmup):
        run_once(gen, wave)
    timed.times.clear()
    _reset_cuda_peak()
    results = [run_once(gen, wave) for _ in range(runs)]
    out: Dict[str, object] = {"kind": kind, "load_s": load_s,
                              "selection": getattr(backend, "selection_reason", "")}
    for name in TIMED:
        out[name + "_ms"] = _stats(timed.times[name])
    decode_ms = out["decode_ms"]["mean"]
    out["decode_steps_per_s"] = 1e3 / decode_ms if decode_ms == decode_ms and decode_ms else 0.0
    steps = sum(len(r["steps"]) for r in results)
    total = sum(r["total_s"] for r in results)
    out["tokens_per_s"] = steps / total if total else 0.0
    out["ttft_ms"] = _stats([r["ttft_ms"] for r in results if "ttft_ms" in r])
    out["ttfa_ms"] = _stats([r["ttff_ms"] for r in results if "ttff_ms" in r])
    out["ttf_audio_ms"] = _stats([r["ttfa_ms"] for r in results if "ttfa_ms" in r])
    out["rtf"] = _stats([r["rtf"] for r in results])
    out["audio_s"] = _stats([r["audio_s"] for r in results])
    out["peak_rss_mb"] = _rss_mb()
    device = _cuda_device(backend)
    out["device"] = device or "cpu"
    weight_bytes = _weight_bytes(backend, kind, cfg)
    out["decode_weight_bytes"] = weight_bytes
    if device == "cuda":
        out["gpu_mem_mb"] = _gpu_used_mb(kind, gpu_free0)
        from a2llm_ros.engines.cache import bandwidth_gbs as table_bandwidth, gpu_info
        gpu = gpu_info() or {}
        out["gpu"] = gpu.get("name", "unknown")
        bandwidth_gbs = bandwidth_gbs or table_bandwidth(out["gpu"])
    if bandwidth_gbs and weight_bytes:
        out["bandwidth_gbs"] = bandwidth_gbs
        out["bandwidth_fraction"] = weight_bytes * out["decode_steps_per_s"] / \
            (bandwidth_gbs * 1e9)
    return out


def _gpu_free() -> Optional[int]:
    try:
        import torch
        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
    except Exception:
        pass
    return None


def _reset_cuda_peak() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except Exception:
        pass


def _gpu_used_mb(kind: str, free0: Optional[int]) -> Optional[float]:
    import torch
    if not torch.cuda.is_available():
        return None
    if kind == "torch":
        return torch.cuda.max_memory_allocated() / (1 << 20)
    if free0 is None:
        return None
    return (free0 - torch.cuda.mem_get_info()[0]) / (1 << 20)


def _value(res: dict, key: str) -> Optional[float]:
    v = res.get(key)
    if isinstance(v, dict):
        v = v.get("mean")
    return None if v is None or v != v else float(v)


def format_table(results: Dict[str, dict]) -> str:
    """Side-by-side table with ratios against torch (``x torch``: value / torch value)."""
    kinds = list(results)
    ok = [k for k in kinds if "error" not in results[k]]
    base = results.get("torch") if "torch" in ok else None
    head = f"{'metric':22s}" + "".join(f"{k:>14s}" for k in ok)
    if base is not None:
        head += "".join(f"{k + ' x torch':>22s}" for k in ok if k != "torch")
    lines = [head, "-" * len(head)]
    for key, label, _ in TABLE:
        vals = [_value(results[k], key) for k in ok]
        if all(v is None for v in vals):
            continue
        row = f"{label:22s}" + "".join(f"{v:14.3f}" if v is not None else f"{'-':>14s}"
                                       for v in vals)
        if base is not None:
            b = _value(base, key)
            for k, v in zip(ok, vals):
                if k == "torch":
                    continue
                row += f"{v / b:22.2f}" if v is not None and b else f"{'-':>22s}"
        lines.append(row)
    for k in kinds:
        if "error" in results[k]:
            lines.append(f"{k}: not run ({results[k]['error']})")
    lines.append("(x torch = value / torch value: < 1 is better for times/memory, > 1 for "
                 "rates)")
    return "\n".join(lines)


def run_isolated(kind: str, params: dict) -> dict:
    """:func:`bench_backend` in a child process (clean peak-memory figures)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "a2llm_ros.tools.bench.engines", "--child",
               json.dumps({**params, "kind": kind, "out": out})]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not os.path.isfile(out):
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            return {"kind": kind, "error": " | ".join(tail) or f"exit {res.returncode}"}
        with open(out) as f:
            return json.load(f)


def run_child(spec: dict) -> int:
    """Entry point of the child process of :func:`run_isolated`."""
    import torch
    torch.set_num_threads(int(spec["threads"]))
    cfg = BackendConfig.from_dict(spec["backend_config"])
    wave = synthetic_question(float(spec["question_seconds"]))
    try:
        res = bench_backend(spec["kind"], spec["checkpoint"], cfg, wave,
                            int(spec["speech_tokens"]), int(spec["runs"]), int(spec["warmup"]),
                            int(spec.get("seed", 0)), spec.get("bandwidth_gbs"))
    except (EngineError, FileNotFoundError, ValueError) as exc:
        res = {"kind": spec["kind"], "error": str(exc)}
    with open(spec["out"], "w") as f:
        json.dump(res, f)
    return 0


def benchmark_backends(checkpoint: str, kinds: List[str], cfg: BackendConfig,
                       question_seconds: float = 2.0, speech_tokens: int = 75, runs: int = 3,
                       warmup: int = 1, threads: int = 1, isolate: bool = True,
                       bandwidth_gbs: Optional[float] = None, seed: int = 0) -> dict:
    """Benchmark ``kinds`` on ``checkpoint``; returns ``{"backends": {...}, ...}``."""
    params = {"checkpoint": checkpoint, "backend_config": cfg.to_dict(),
              "question_seconds": question_seconds, "speech_tokens": speech_tokens,
              "runs": runs, "warmup": warmup, "threads": threads, "seed": seed,
              "bandwidth_gbs": bandwidth_gbs}
    results = {}
    for kind in kinds:
        if isolate:
            results[kind] = run_isolated(kind, params)
            continue
        import torch
        torch.set_num_threads(threads)
        try:
            results[kind] = bench_backend(kind, checkpoint, cfg,
                                          synthetic_question(question_seconds), speech_tokens,
                                          runs, warmup, seed, bandwidth_gbs)
        except (EngineError, FileNotFoundError, ValueError) as exc:
            results[kind] = {"kind": kind, "error": str(exc)}
    return {"machine": machine_info(), "checkpoint": checkpoint, "question_s": question_seconds,
            "speech_tokens": speech_tokens, "runs": runs, "threads": threads,
            "answer_s": speech_tokens * SAMPLES_PER_SPEECH_TOKEN / SAMPLE_RATE,
            "backend_config": cfg.to_dict(), "backends": results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m a2llm_ros.tools.bench.engines")
    p.add_argument("--child", required=True, help="JSON job (internal)")
    args = p.parse_args(argv)
    return run_child(json.loads(args.child))


if __name__ == "__main__":
    sys.exit(main())
