"""End-pointing benchmark on questions with pauses inside them (the false-cut guard).

Run ``python -m a2llm_ros.tools.bench.turns [--questions 20] [--json OUT]``.  Every
question of the pause fixture (:mod:`a2llm_ros.tools.data.pause_fixture`: espeak-ng,
held-out voice, a 300/450/600 ms pause at the comma or before the last word)
goes through the ROS-free :class:`~a2llm_ros.conversation.session.ConversationSession`
with silero VAD and the default model, chunk by chunk in audio time, once per
end-pointing setting of :data:`SETTINGS`.  Reported per setting:

* ``false_cut_pct``: turns whose answer started (state ``thinking``) before the
  question's true end of speech;
* ``endpoint_ms`` p50 / p95: true end of speech -> utterance end (audio time, exact;
  the VAD's 32 ms decisions, its silence and padding rules);
* ``compute_to_first_audio_ms`` p50: wall-clock time the worker spent from the
  utterance end to the first answer audio (prefill and first steps; with
  speculation, what was not done during the pause);
* speculations started, committed and dropped; commits by the end-of-turn head
  (:mod:`a2llm_ros.conversation.end_of_turn`) when the setting uses it.

End of speech -> first FLAME in the graph is about ``endpoint_ms`` + the compute
+ the output pipeline; ``a2llm bench --graph`` measures that end to end.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from typing import Dict, Optional, Sequence

import numpy as np

from a2llm_ros.constants import SAMPLE_RATE
from a2llm_ros.conversation.session import ConversationSession, SessionSink, TurnConfig
from a2llm_ros.conversation.vad import VadConfig

#: Input chunk of the simulated microphone (samples, one VAD decision).
CHUNK = 512
#: Silence fed after each question so the answer can finish (s).
DRAIN_S = 3.0
#: name -> VadConfig overrides (the first is the shipped default).
SETTINGS: Dict[str, Dict[str, float]] = {
    "default (600 ms silence)": {},
    "600 ms + speculation at 200 ms": {"speculate_after_ms": 200.0},
    "400 ms + speculation at 200 ms": {"min_silence_ms": 400.0, "speculate_after_ms": 200.0},
    "250 ms + speculation at 200 ms": {"min_silence_ms": 250.0, "speculate_after_ms": 200.0},
    "end-of-turn head at 200 ms, else 600 ms": {"speculate_after_ms": 200.0,
                                                "end_of_turn": True},
    "end-of-turn head at 200 ms, else 800 ms": {"min_silence_ms": 800.0,
                                                "speculate_after_ms": 200.0,
                                                "end_of_turn": True},
}


class _Timeline(SessionSink):
    """Audio time (sample of the chunk being fed) of the first thinking state and audio."""

    def __init__(self):
        self.now = 0
        self.t_think: Optional[int] = None
        self.t_audio: Optional[int] = None
        self.wall_think: Optional[float] = None
        self.compute_s = 0.0  # worker time from thinking to the first audio
        self.counters: Dict[str, int] = {}  # the session's, when the run ends

    def on_state(self, state, turn_id, reason):
        if state == "thinking" and self.t_think is None:
            self.t_think, self.wall_think = self.now, time.perf_counter()

    def on_audio(self, turn_id, samples, start_sample):
        if self.t_audio is None and self.t_think is not None:
            self.t_audio = self.now


def run_question(audio: np.ndarray, vad: VadConfig, generator_factory,
                 end_of_turn=None) -> _Timeline:
    """Feed ``audio`` (then :data:`DRAIN_S` of silence) chunk by chunk; one session step
    per chunk, as the node's worker does; worker time is summed after ``thinking``."""
    sink = _Timeline()
    session = ConversationSession(generator_factory, sink, TurnConfig(), vad,
                                  end_of_turn=end_of_turn)
    wave = np.concatenate([audio, np.zeros(int(DRAIN_S * SAMPLE_RATE), np.float32)])
    for i in range(0, len(wave), CHUNK):
        sink.now = i
        session.submit_audio(wave[i:i + CHUNK], i)
        t0 = time.perf_counter()
        session.step()
        if sink.t_think is not None and sink.t_audio is None:
            sink.compute_s += time.perf_counter() - max(t0, sink.wall_think)
        if sink.t_audio is not None:
            break
    sink.counters = dict(session.counters)
    return sink


def measure(questions, overrides: Dict[str, float], generator_factory,
            end_of_turn=None) -> Dict[str, float]:
    """The figures of one setting over the fixture (module docstring)."""
    vad = VadConfig(**overrides)
    cuts, endpoint, compute = 0, [], []
    spec = {"speculations_started": 0, "speculations_committed": 0, "speculations_dropped": 0,
            "end_of_turn_commits": 0}
    for q in questions:
        run = run_question(q.audio, vad, generator_factory, end_of_turn)
        for key in spec:
            spec[key] += run.counters.get(key, 0)
        if run.t_think is None:
            continue
        if run.t_think < q.speech_end:
            cuts += 1
            continue
        endpoint.append(1000.0 * (run.t_think - q.speech_end) / SAMPLE_RATE)
        if run.t_audio is not None:
            compute.append(1000.0 * run.compute_s)
    pct = (lambda xs, p: float(np.percentile(xs, p)) if xs else float("nan"))
    return {"turns": len(questions), "false_cut_pct": 100.0 * cuts / max(1, len(questions)),
            "endpoint_ms_p50": pct(endpoint, 50), "endpoint_ms_p95": pct(endpoint, 95),
            "compute_to_first_audio_ms_p50": pct(compute, 50), **spec}


def markdown(results: Dict[str, Dict[str, float]]) -> str:
    lines = ["| setting | false cuts | end-pointing p50 / p95 | compute to first audio p50 "
             "| speculations started / committed / dropped | end-of-turn commits |",
             "|---|---:|---|---:|---|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['false_cut_pct']:.0f} % of {r['turns']} "
                     f"| {r['endpoint_ms_p50']:.0f} / {r['endpoint_ms_p95']:.0f} ms "
                     f"| {r['compute_to_first_audio_ms_p50']:.0f} ms "
                     f"| {r['speculations_started']} / {r['speculations_committed']} / "
                     f"{r['speculations_dropped']} | {r['end_of_turn_commits']} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--questions", type=int, default=20, help="first N of the 50")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    import torch

    from a2llm_ros.checkpoint import load_checkpoint
    from a2llm_ros.tools.data.pause_fixture import pause_fixture
    from a2llm_ros.tools.data.qa_text import QA_PAIRS
    from a2llm_ros.generation import GenerationConfig, StreamingGenerator
    torch.set_num_threads(1)
    from a2llm_ros.engines.torch_backend import TorchBackend
    from a2llm_ros.conversation.end_of_turn import load_end_of_turn
    model = load_checkpoint(args.checkpoint)
    head = load_end_of_turn(model.base_dir)
    cfg = GenerationConfig(greedy=True)
    questions = pause_fixture([p.question for p in QA_PAIRS[:args.questions]])
    results: Dict[str, Dict[str, float]] = {}
    for name, overrides in SETTINGS.items():
        if overrides.get("end_of_turn") and head is None:
            print(f"{name}: skipped, the checkpoint has no end-of-turn head", file=sys.stderr)
            continue
        results[name] = measure(questions, overrides,
                                lambda: StreamingGenerator(TorchBackend(model), cfg), head)
        print(f"{name}: {results[name]}", file=sys.stderr)
    stamp = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"{platform.machine()}, checkpoint {args.checkpoint!r}, one torch thread")
    print(markdown(results))
    print(f"\n{stamp}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"when": stamp, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
