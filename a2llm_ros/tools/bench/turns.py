"""End-pointing benchmark on questions with pauses inside them (the false-cut guard).

Run ``python -m a2llm_ros.tools.bench.turns [--questions 20] [--json OUT]``.  Every
question of the pause fixture (:mod:`a2llm_ros.tools.data.pause_fixture`: espeak-ng,
held-out voice, a 300/450/600 ms pause at the comma or before the last word)
goes through the ROS-free :class:`~a2llm_ros.conversation.session.ConversationSession`
with silero VAD and the default model, chunk by chunk in audio time, once per
end-pointing setting of :data:`SETTINGS`.  Reported per setting:

* ``false_cut_pct``: turns where an answer started (state ``thinking``) before the
  question's true end of speech; ``whole_after_cut``: of those, how many were then
  answered whole (the generator got a wave spanning the whole question: barge-in and
  the end-pointer's rejoin);
* ``endpoint_ms`` p50 / p95: true end of speech -> ``thinking`` of the answer started
  after it (audio time, exact; the VAD's 32 ms decisions, its silence and padding
  rules, the end-of-turn head);
* ``right_pct`` (unless ``--no-answers``): that answer's final text equals the
  question's FLAME-QA answer (each answer then runs to its end);
* ``compute_to_first_audio_ms`` p50: wall-clock time the worker spent from the
  utterance end to the first answer audio (prefill and first steps; with
  speculation, what was not done during the pause);
* speculations started, committed and dropped; commits by the end-of-turn head
  (:mod:`a2llm_ros.conversation.end_of_turn`) and rejoins (a commit the user went on
  after) when the setting uses it.  The last setting reads ``config/fast_turns.yaml``.

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
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from a2llm_ros.constants import SAMPLE_RATE
from a2llm_ros.conversation.session import (SPECULATION_COUNTERS, ConversationSession, SessionSink,
                                            TurnConfig)
from a2llm_ros.conversation.vad import VadConfig

#: Input chunk of the simulated microphone (samples, one VAD decision).
CHUNK = 512
#: Silence fed after each question so the answer can finish (s).
DRAIN_S = 3.0
#: The fast turn-taking parameter file (config/).
FAST_TURNS = "fast_turns.yaml"


def node_overrides(config: str = FAST_TURNS) -> Dict[str, object]:
    """a2llm_node parameters of a parameter file in config/ ({"vad.x": value})."""
    import yaml

    from a2llm_ros.paths import config_file
    with open(config_file(config)) as f:
        return dotted(yaml.safe_load(f)["/**/a2llm_node"]["ros__parameters"])


def dotted(tree: Dict[str, object], prefix: str = "") -> Dict[str, object]:
    """Nested parameter maps -> {dotted name: value}."""
    out: Dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def vad_overrides(config: str = FAST_TURNS) -> Dict[str, float]:
    """The ``vad.*`` parameters of a parameter file as VadConfig keyword arguments."""
    return {k[len("vad."):]: v for k, v in node_overrides(config).items()
            if k.startswith("vad.")}


#: name -> VadConfig overrides (the first is the shipped default; None: config/fast_turns.yaml).
SETTINGS: Dict[str, Optional[Dict[str, float]]] = {
    "default (600 ms silence)": {},
    "600 ms + speculation at 200 ms": {"speculate_after_ms": 200.0},
    "250 ms + speculation at 200 ms": {"min_silence_ms": 250.0, "speculate_after_ms": 200.0},
    "end-of-turn head at 200 ms, else 800 ms": {"min_silence_ms": 800.0,
                                                "speculate_after_ms": 200.0,
                                                "end_of_turn": True},
    f"{FAST_TURNS}: 96 ms padding, head at 96 ms, else 800 ms": None,
}


class _Timeline(SessionSink):
    """Audio time (sample of the chunk being fed) of the turns' states and first audio."""

    def __init__(self):
        self.now = 0
        self.thinking: List[Tuple[int, int]] = []    # (sample, turn id) of each `thinking`
        self.first_audio: Dict[int, int] = {}         # turn id -> sample of its first audio
        self.texts: Dict[int, str] = {}               # turn id -> final text
        self.wall_think: Dict[int, float] = {}
        self.compute_s: Dict[int, float] = {}  # worker time from thinking to first audio
        self.counters: Dict[str, int] = {}  # the session's, when the run ends

    def on_state(self, state, turn_id, reason):
        if state == "thinking":
            self.thinking.append((self.now, turn_id))
            self.wall_think[turn_id] = time.perf_counter()
            self.compute_s[turn_id] = 0.0

    def on_audio(self, turn_id, samples, start_sample):
        self.first_audio.setdefault(turn_id, self.now)

    def on_text(self, turn_id, text, final):
        if final:
            self.texts[turn_id] = text

    def waiting(self) -> List[int]:
        """Turns that are thinking and have no audio yet."""
        return [k for _, k in self.thinking if k not in self.first_audio]


class _Recording:
    """A generator that records the length of every question wave it starts on."""

    def __init__(self, generator, lengths: List[int]):
        self._generator, self._lengths = generator, lengths

    def __getattr__(self, name):
        return getattr(self._generator, name)

    def start(self, wave, turn_id=None):
        self._lengths.append(len(wave))
        return self._generator.start(wave, turn_id)


def run_question(audio: np.ndarray, speech_end: int, vad: VadConfig, generator_factory,
                 end_of_turn=None, whole_answer: bool = False) -> Tuple[_Timeline, List[int]]:
    """Feed ``audio`` (then :data:`DRAIN_S` of silence) chunk by chunk, one session step per
    chunk as the node's worker does, until a turn started after ``speech_end`` has its
    first audio (``whole_answer``: its final text).  Worker time after each ``thinking``
    is summed until that turn's first audio.  Returns the timeline and the question wave
    lengths the generator got."""
    sink, lengths = _Timeline(), []
    session = ConversationSession(lambda: _Recording(generator_factory(), lengths), sink,
                                  TurnConfig(), vad, end_of_turn=end_of_turn)
    wave = np.concatenate([audio, np.zeros(int(DRAIN_S * SAMPLE_RATE), np.float32)])
    done = sink.texts if whole_answer else sink.first_audio
    i = 0
    while i < len(wave) or (whole_answer and session.state in ("thinking", "speaking")):
        sink.now = i
        session.submit_audio(wave[i:i + CHUNK] if i < len(wave)
                             else np.zeros(CHUNK, np.float32), i)
        i += CHUNK
        t0 = time.perf_counter()
        session.step()
        for k in sink.waiting():
            sink.compute_s[k] += time.perf_counter() - max(t0, sink.wall_think[k])
        if any(t >= speech_end and k in done for t, k in sink.thinking):
            break
    sink.counters = dict(session.counters)
    return sink, lengths


def measure(questions, overrides: Dict[str, float], generator_factory,
            end_of_turn=None, answers: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """The figures of one setting over the fixture (module docstring)."""
    from a2llm_ros.tools.asr import normalize_words
    vad = VadConfig(**overrides)
    cuts, whole_after_cut, right, endpoint, compute = 0, 0, 0, [], []
    spec = {name: 0 for name in SPECULATION_COUNTERS}
    for q in questions:
        run, lengths = run_question(q.audio, q.speech_end, vad, generator_factory, end_of_turn,
                                    whole_answer=bool(answers))
        for key in spec:
            spec[key] += run.counters.get(key, 0)
        early = [k for t, k in run.thinking if t < q.speech_end]
        after = [(t, k) for t, k in run.thinking if t >= q.speech_end]
        cuts += bool(early)
        if not after:
            continue
        t, k = after[0]
        whole = lengths[-1] >= q.speech_end - q.speech_start
        whole_after_cut += bool(early) and whole
        endpoint.append(1000.0 * (t - q.speech_end) / SAMPLE_RATE)
        if k in run.first_audio:
            compute.append(1000.0 * run.compute_s[k])
        if answers and q.text in answers:
            right += normalize_words(run.texts.get(k, "")) == normalize_words(answers[q.text])
    pct = (lambda xs, p: float(np.percentile(xs, p)) if xs else float("nan"))
    n = max(1, len(questions))
    return {"turns": len(questions), "false_cut_pct": 100.0 * cuts / n,
            "false_cuts": cuts, "whole_after_cut": whole_after_cut,
            "answered_after_end": len(endpoint),
            "right_pct": 100.0 * right / n if answers else float("nan"),
            "endpoint_ms_p50": pct(endpoint, 50), "endpoint_ms_p95": pct(endpoint, 95),
            "compute_to_first_audio_ms_p50": pct(compute, 50), **spec}


def markdown(results: Dict[str, Dict[str, float]]) -> str:
    lines = ["| setting | false cuts (answered whole after) | end-pointing p50 / p95 "
             "| compute to first audio p50 | right answers "
             "| speculations started / committed / dropped | end-of-turn commits / rejoins |",
             "|---|---:|---|---:|---:|---|---|"]
    for name, r in results.items():
        right = "\u2014" if r["right_pct"] != r["right_pct"] else f"{r['right_pct']:.0f} %"
        lines.append(f"| {name} | {r['false_cut_pct']:.0f} % of {r['turns']} "
                     f"({r['whole_after_cut']}) "
                     f"| {r['endpoint_ms_p50']:.0f} / {r['endpoint_ms_p95']:.0f} ms "
                     f"| {r['compute_to_first_audio_ms_p50']:.0f} ms | {right} "
                     f"| {r['speculations_started']} / {r['speculations_committed']} / "
                     f"{r['speculations_dropped']} | {r['end_of_turn_commits']} / "
                     f"{r['end_of_turn_rejoins']} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--questions", type=int, default=20, help="first N of the 50")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--only", default="",
                        help="only the settings whose name contains this text")
    parser.add_argument("--no-answers", dest="answers", action="store_false",
                        help="stop at each answer's first audio (faster; no right-answer "
                             "count)")
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
    head = head.check_model(model) if head is not None else None
    cfg = GenerationConfig(greedy=True)
    questions = pause_fixture([p.question for p in QA_PAIRS[:args.questions]])
    results: Dict[str, Dict[str, float]] = {}
    answers = {p.question: p.answer for p in QA_PAIRS} if args.answers else None
    for name, overrides in SETTINGS.items():
        if args.only not in name:
            continue
        overrides = vad_overrides() if overrides is None else overrides
        if overrides.get("end_of_turn") and head is None:
            print(f"{name}: skipped, the checkpoint has no end-of-turn head", file=sys.stderr)
            continue
        results[name] = measure(questions, overrides,
                                lambda: StreamingGenerator(TorchBackend(model), cfg), head,
                                answers)
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
