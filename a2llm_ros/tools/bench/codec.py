"""``a2llm bench --codec {tiny,full,DIR}``: Step-Audio-2 codec latency and RTF.

Streams ``--speech-tokens`` random S3 ids through the codec the way the
generator does (5 tokens a step, then ``flush``) and reports:

* ``prompt_ms`` — voice-prompt setup (S3 tokens, CAM++, prompt mel, flow cache),
  once per voice;
* ``first_chunk_ms`` — compute time of the step that yields the first audio
  (the flow over 25 + 3 tokens and the vocoder), p50 over runs;
* ``first_audio_after_tokens`` — tokens the generator must have produced first
  (chunk + lookahead: 28 = 1.12 s of speech tokens);
* ``rtf`` — total decode time / audio duration.

``tiny`` and ``full`` write a random-weight folder in the published layout
(:mod:`a2llm_ros.tools.data.token2wav_fixture`; ``full`` has the published flow sizes,
so its timings are those of the real network); a path uses that folder.
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from typing import Dict, List

import torch

#: Tokens handed to the decoder per generator step (one motion segment).
STEP_TOKENS = 5


def _folder(spec: str, scratch: str) -> str:
    from a2llm_ros.tools.data.token2wav_fixture import SIZES, write_token2wav
    if spec in SIZES:
        return write_token2wav(os.path.join(scratch, f"token2wav_{spec}"), size=spec)
    if os.path.isdir(os.path.join(spec, "token2wav")):
        return os.path.join(spec, "token2wav")
    return spec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_run(t2w, codes: torch.Tensor) -> Dict[str, float]:
    state = t2w.init_state()
    first, total, n = None, 0.0, 0
    for chunk in codes.split(STEP_TOKENS):
        t0 = time.perf_counter()
        audio, state = t2w.step(chunk, state)
        _sync(t2w.device)
        dt = time.perf_counter() - t0
        total += dt
        if first is None and audio.numel():
            first = dt
        n += audio.numel()
    t0 = time.perf_counter()
    audio, state = t2w.flush(state)
    _sync(t2w.device)
    total += time.perf_counter() - t0
    n += audio.numel()
    assert n == codes.numel() * t2w.samples_per_token
    return {"first_chunk_s": first if first is not None else total, "total_s": total,
            "audio_s": n / t2w.sample_rate}


def bench_codec(spec: str, device: str = "cpu", speech_tokens: int = 150, runs: int = 3,
                warmup: int = 1, threads: int = 1) -> dict:
    """Benchmark the codec of ``spec`` (``tiny``, ``full`` or a folder); a result dict."""
    from a2llm_ros.model.codecs import make_codec
    from a2llm_ros.model.configs import SpeechCodecConfig
    torch.set_num_threads(max(1, threads))
    with tempfile.TemporaryDirectory() as scratch:
        folder = _folder(spec, scratch)
        t0 = time.perf_counter()
        _, t2w = make_codec(SpeechCodecConfig.step(folder, device=device))
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        t2w.prompt()
        prompt_s = time.perf_counter() - t0
        gen = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 6561, (speech_tokens,), generator=gen)
        results: List[Dict[str, float]] = []
        for i in range(warmup + runs):
            r = _one_run(t2w, codes)
            if i >= warmup:
                results.append(r)
    first = statistics.median(r["first_chunk_s"] for r in results)
    rtf = statistics.median(r["total_s"] / r["audio_s"] for r in results)
    return {"codec": spec, "device": str(t2w.device), "threads": threads,
            "speech_tokens": speech_tokens, "runs": runs, "load_ms": 1e3 * load_s,
            "prompt_ms": 1e3 * prompt_s, "first_chunk_ms": 1e3 * first,
            "first_audio_after_tokens": t2w.first_chunk_tokens,
            "first_audio_after_ms": 1e3 * t2w.first_chunk_tokens / 25, "rtf": rtf,
            "machine": {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or
                        platform.machine(), "cores": os.cpu_count(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                        else None}}


def format_codec(res: dict) -> str:
    """One human-readable block."""
    return (f"codec {res['codec']} on {res['device']} ({res['threads']} thread(s), "
            f"{res['speech_tokens']} tokens, {res['runs']} runs, {res['machine']['date']}):\n"
            f"  load {res['load_ms']:.0f} ms, voice prompt {res['prompt_ms']:.0f} ms\n"
            f"  first chunk {res['first_chunk_ms']:.0f} ms compute, after "
            f"{res['first_audio_after_tokens']} tokens ({res['first_audio_after_ms']:.0f} ms "
            f"of speech tokens)\n  RTF {res['rtf']:.3f}")
