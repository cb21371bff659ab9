"""Latency benchmark of the streaming core (LLM, vocoder, connector, motion decoder).

Run ``python -m a2llm_ros.tools.bench.core --checkpoint DIR [--json OUT]``.  Each run
answers the same question with exactly ``--speech-tokens`` speech tokens
(``min_speech_tokens = max_speech_tokens``, so random checkpoints give a
fixed-length answer) and reports, over the runs after ``--warmup``:

* ``prefill_ms``: question wave -> log-mel -> audio encoder -> LLM prefill
  (``StreamingGenerator.start``), split into ``encode_audio_ms`` and
  ``llm_prefill_ms``;
* ``decode_ms``: one LLM decode call with the KV cache and the token's sampling
  (mean, p50, p90); ``step_ms``: one generator step incl. vocoder / connector /
  motion work; ``token2wav_ms`` (per 5-token chunk), ``motion_ms`` (Motion
  Connector + RVQ-VAE decoder, per 5 frames);
* ``ttft_ms`` / ``ttfs_ms``: question end (the ``start`` call) -> first text /
  speech token ready; ``ttfa_ms``: -> first audio chunk (200 ms) ready;
  ``ttff_ms``: -> first FLAME frames ready;
* ``rtf``: generation wall time / generated audio duration (< 1 is faster
  than real time).

Times are wall-clock on the CPU (or the model's device) of this machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections import defaultdict
from typing import Dict, List, Optional

import numpy as np
import torch

from a2llm_ros.audio.signals import synthetic_question
from a2llm_ros.constants import SAMPLE_RATE
from a2llm_ros.engines.backend import Backend
from a2llm_ros.engines.torch_backend import TorchBackend
from a2llm_ros.generation import (AudioEvent, FlameEvent, GenerationConfig, StreamingGenerator,
                                  TextEvent)

#: Backend calls that are timed: the generator's interface calls, then the lower-level
#: calls that the PyTorch and graph backends make inside ``prefill`` / ``decode``.
TIMED = ("prefill", "decode", "motion_step", "codec_step", "encode_audio", "llm_prefill",
         "llm_decode")
#: The lower-level calls (wrapped on the inner backend's instance): timed name -> the
#: backend method that implements it, the first one the backend has (the graph backends'
#: ``prefill`` / ``decode`` run ``llm_*_outputs``, PyTorch's ``llm_prefill`` / ``llm_decode``).
INNER_TIMED = {"encode_audio": ("encode_audio",),
               "llm_prefill": ("llm_prefill_outputs", "llm_prefill"),
               "llm_decode": ("llm_decode_outputs", "llm_decode")}


class TimedBackend(Backend):
    """Wraps any :class:`~a2llm_ros.engines.backend.Backend` and records the wall time (ms)
    of every call per name in :data:`TIMED` (the inner backend's ``encode_audio``,
    ``llm_prefill`` and ``llm_decode`` are wrapped on that instance)."""

    def __init__(self, inner: Backend):
        self.inner, self.model, self.kind = inner, inner.model, inner.kind
        self.times: Dict[str, List[float]] = defaultdict(list)
        for name, methods in INNER_TIMED.items():
            method = next((m for m in methods if hasattr(inner, m)), None)
            if method is not None:
                setattr(inner, method, self._timer(name, getattr(inner, method)))

    def _timer(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.times[name].append((time.perf_counter() - t0) * 1e3)
            return out
        return timed

    def rng(self, seed):
        return self.inner.rng(seed)

    def prefill(self, wave, pick, rng):
        return self._timer("prefill", self.inner.prefill)(wave, pick, rng)

    def decode(self, token, cache, pick, rng):
        return self._timer("decode", self.inner.decode)(token, cache, pick, rng)

    def host(self, hidden):
        return self.inner.host(hidden)

    def init_motion_state(self):
        return self.inner.init_motion_state()

    def motion_step(self, hidden, state, temperature, top_k, rng):
        return self._timer("motion_step", self.inner.motion_step)(hidden, state, temperature,
                                                                  top_k, rng)

    def init_codec_state(self):
        return self.inner.init_codec_state()

    def codec_step(self, codes, state):
        return self._timer("codec_step", self.inner.codec_step)(codes, state)

    def codec_flush(self, state):
        return self.inner.codec_flush(state)


def _stats(values: List[float]) -> Dict[str, float]:
    if not values:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "n": 0}
    a = np.asarray(values)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "n": int(a.size)}


def run_once(gen: StreamingGenerator, wave: np.ndarray) -> Dict[str, float]:
    """One turn; returns its first-output latencies, step times and RTF."""
    firsts: Dict[str, float] = {}
    steps: List[float] = []
    n_samples = 0
    t0 = time.perf_counter()
    gen.start(wave)
    firsts["prefill_ms"] = (time.perf_counter() - t0) * 1e3
    while gen.active:
        ts = time.perf_counter()
        events = gen.step()
        now = time.perf_counter()
        steps.append((now - ts) * 1e3)
        since = (now - t0) * 1e3
        if gen.state.speech_codes and "ttfs_ms" not in firsts:
            firsts["ttfs_ms"] = since
        for e in events:
            key = {TextEvent: "ttft_ms", AudioEvent: "ttfa_ms", FlameEvent: "ttff_ms"}.get(type(e))
            if key and key not in firsts:
                firsts[key] = since
            if isinstance(e, AudioEvent):
                n_samples += e.samples.shape[0]
    total = time.perf_counter() - t0
    rate = gen.model.token2wav.sample_rate
    firsts.update(total_s=total, audio_s=n_samples / rate,
                  rtf=total / max(n_samples / rate, 1e-9))
    firsts["steps"] = steps
    return firsts


def benchmark(model, wave: np.ndarray, speech_tokens: int = 75, runs: int = 3,
              warmup: int = 1, seed: int = 0) -> dict:
    """Benchmark ``model`` on ``wave``; returns the result dict (see module docstring)."""
    backend = TimedBackend(TorchBackend(model))
    cfg = GenerationConfig(max_speech_tokens=speech_tokens, min_speech_tokens=speech_tokens,
                           seed=seed)
    gen = StreamingGenerator(backend, cfg)
    for _ in range(warmup):
        run_once(gen, wave)
    backend.times.clear()
    results = [run_once(gen, wave) for _ in range(runs)]
    t = backend.times
    out = {"decode_ms": _stats(t["decode"]), "step_ms": _stats(
        [s for r in results for s in r["steps"]]),
        "encode_audio_ms": _stats(t["encode_audio"]), "llm_prefill_ms": _stats(t["llm_prefill"]),
        "token2wav_ms": _stats(t["codec_step"]), "motion_ms": _stats(t["motion_step"])}
    for key in ("prefill_ms", "ttft_ms", "ttfs_ms", "ttfa_ms", "ttff_ms", "rtf", "audio_s",
                "total_s"):
        out[key] = _stats([r[key] for r in results if key in r])
    return out


def machine_info() -> dict:
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "processor": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def format_report(res: dict) -> str:
    """Human-readable summary lines."""
    lines = []
    for key in ("prefill_ms", "encode_audio_ms", "llm_prefill_ms", "decode_ms", "step_ms",
                "token2wav_ms", "motion_ms", "ttft_ms", "ttfs_ms",
                "ttfa_ms", "ttff_ms", "rtf", "audio_s"):
        s = res[key]
        lines.append(f"{key:18s} mean {s['mean']:9.3f}  p50 {s['p50']:9.3f}  "
                     f"p90 {s['p90']:9.3f}  (n={s['n']})")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m a2llm_ros.tools.bench.core", description=__doc__
                                .splitlines()[0])
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--input", default=None, help="question .wav (default: synthetic)")
    p.add_argument("--question-seconds", type=float, default=2.0)
    p.add_argument("--speech-tokens", type=int, default=75, help="answer length (75 = 3 s)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    from a2llm_ros.checkpoint import load_checkpoint
    try:
        model = load_checkpoint(args.checkpoint, device=args.device)
        if args.input:
            from a2llm_ros.audio.io import read_wav
            wave = read_wav(args.input)
        else:
            wave = synthetic_question(args.question_seconds)
    except (FileNotFoundError, ValueError) as exc:
        print(f"bench_core: {exc}", file=sys.stderr)
        return 1
    res = benchmark(model, wave, args.speech_tokens, args.runs, args.warmup)
    res.update(machine=machine_info(), checkpoint=os.path.abspath(args.checkpoint)
               if args.checkpoint != "default" else "default",
               preset=model.cfg.preset_name, n_params=model.n_params(),
               question_s=wave.size / SAMPLE_RATE, speech_tokens=args.speech_tokens,
               runs=args.runs)
    print(f"A2LLM core benchmark: preset {res['preset']}, {res['n_params'] / 1e6:.2f} M params, "
          f"question {res['question_s']:.2f} s, answer {args.speech_tokens} speech tokens, "
          f"{args.runs} runs, {torch.get_num_threads()} thread(s), {res['machine']['date']}")
    print(format_report(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
