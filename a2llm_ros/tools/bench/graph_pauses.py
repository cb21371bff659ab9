"""The pause guard through the ROS graph: ``a2llm bench --graph --graph-fixture pause``.

The bag holds the first ``--graph-questions`` questions of the pause fixture
(:mod:`a2llm_ros.tools.data.pause_fixture`: held-out espeak-ng voice, a
300/450/600 ms pause inside each question), each followed by silence for its
answer.  The sidecar marks every question's onset, pause (``pause_s``) and true
end of speech (``offset_s``).  Per question, from the messages the client
received (times: the bag's timeline mapped onto this process's clock):

* ``false_cut``: an answer went public (the node's ``thinking`` state) before
  the question's true end;
* ``stop_ms`` (after a false cut): the voice coming back (end of the pause) ->
  the last speech audio, FLAME frame or FLAME chunk of the cut answer received
  (barge-in flushes the rest); ``answered``: an answer started after the true end
  (with the end-of-turn head, the end-pointer continues the cut question, so that
  answer is to the whole of it; the ROS-free ``bench.turns`` checks the question
  wave itself);
* ``endpoint_ms``: true end -> ``thinking`` of the answer started after it;
  ``ttff_ms``: true end -> that answer's first speech FLAME chunk.

``--graph-fixture plain`` (:func:`write_plain_bag`) replays the same questions spoken
in one go by the bag fixtures' espeak-ng voice (the bench's own voice), with the
bench's usual per-turn figures: plain-question latency over up to 50 texts instead
of the bench's two.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from a2llm_ros.constants import SAMPLE_RATE

__all__ = ["FIXTURES", "write_pause_bag", "write_plain_bag", "guard_rows", "guard_summary",
           "PAUSE_GAP_S"]

#: ``--graph-fixture`` values: the bench's plain questions, or the pause fixture.
FIXTURES = ("questions", "pause", "plain")
#: Silence after a question besides its answer: fallback end-pointing, first output,
#: margin (s).
PAUSE_GAP_S = 2.0
#: ... and after a plain question (no barge-in to wait for; the 800 ms fallback + margin).
PLAIN_GAP_S = 1.5


def _texts(n_questions: int) -> List[str]:
    from a2llm_ros.tools.data.qa_text import QA_PAIRS
    if not 1 <= n_questions <= len(QA_PAIRS):
        raise ValueError(f"--graph-questions: 1..{len(QA_PAIRS)}, got {n_questions}")
    return [p.question for p in QA_PAIRS[:n_questions]]


def write_plain_bag(out: Path, n_questions: int, answer_s: float) -> Tuple[Path, dict]:
    """(bag, sidecar) of the first ``n_questions`` of the 50 questions spoken in one go by
    the bag fixtures' espeak-ng voice (``--graph-fixture plain``): the latency of plain
    questions over more than the bench's two texts."""
    from a2llm_ros.tools.rosgraph.graph_run import write_question_bag
    bag = out / "graph_bench_plain"
    return bag, write_question_bag(bag, _texts(n_questions), answer_s + PLAIN_GAP_S,
                                   name=bag.name)


def write_pause_bag(out: Path, n_questions: int, answer_s: float) -> Tuple[Path, dict]:
    """(bag, sidecar) of the first ``n_questions`` pause-fixture questions; every sidecar
    utterance gains ``pause_s`` = [start, end] of its inner pause (bag seconds)."""
    from a2llm_ros.tools.data.pause_fixture import pause_fixture
    from a2llm_ros.tools.rosgraph.graph_run import write_question_bag
    questions = pause_fixture(_texts(n_questions))
    bag = out / "graph_bench_pauses"
    meta = write_question_bag(
        bag, [(q.text, q.audio[q.speech_start:q.speech_end]) for q in questions],
        answer_s + PAUSE_GAP_S, name=bag.name)
    for utt, q in zip(meta["utterances"], questions):
        utt["pause_s"] = [utt["onset_s"] + (edge - q.speech_start) / SAMPLE_RATE
                          for edge in q.pause]
    bag.with_name(bag.name + ".json").write_text(json.dumps(meta, indent=1))
    return bag, meta


def _last_output(res, turn) -> Optional[float]:
    """Receive time of the last speech message of ``turn`` (audio, frames, chunks)."""
    from a2llm_ros.tools.rosgraph.graph_run import SOURCE_SPEECH
    times = list(turn.audio_recv)
    times += [] if turn.frame_recv is None else [float(t) for t in turn.frame_recv]
    times += [c[0] for c in res.chunks if c[2] == turn.turn_id and c[4] == SOURCE_SPEECH]
    return max(times) if times else None


def guard_rows(res) -> List[Dict[str, object]]:
    """Per-question figures (module docstring) of a replay of the pause bag."""
    from a2llm_ros.tools.rosgraph.graph_run import load_sidecar
    side = load_sidecar(res.config.sidecar) or {}
    utts = [u for u in side.get("utterances", []) if "pause_s" in u]
    if res.bag_origin is None or not utts:
        return []
    rate = res.config.rate

    def at(bag_s: float) -> float:
        return res.bag_origin + float(bag_s) / rate
    rows = []
    for i, utt in enumerate(utts):
        onset, end, resume = at(utt["onset_s"]), at(utt["offset_s"]), at(utt["pause_s"][1])
        following = at(utts[i + 1]["onset_s"]) if i + 1 < len(utts) else float("inf")
        early = [t for t in res.turns if onset <= t.t_thinking < end]
        answer = next((t for t in res.turns if end <= t.t_thinking < following), None)
        stops = [_last_output(res, t) for t in early]
        stops = [s for s in stops if s is not None]
        rows.append({
            "question": utt.get("text", ""),
            "pause_ms": 1000.0 * (utt["pause_s"][1] - utt["pause_s"][0]),
            "false_cut": bool(early),
            "stop_ms": 1000.0 * max(0.0, max(stops) - resume) if stops else None,
            "answered": answer is not None,
            "endpoint_ms": None if answer is None else 1000.0 * (answer.t_thinking - end),
            "ttff_ms": None if answer is None or answer.first_flame is None
            else 1000.0 * (answer.first_flame - end)})
    return rows


def _stats(values: List[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    v = np.asarray(values, np.float64)
    return {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
            "max": float(v.max())}


def guard_summary(rows: List[Dict[str, object]]) -> Dict[str, object]:
    """False-cut rate, barge-in stop times, and the latencies of the answers."""
    cuts = [r for r in rows if r["false_cut"]]
    stops = [r["stop_ms"] for r in cuts if r["stop_ms"] is not None]
    return {
        "questions": len(rows), "false_cuts": len(cuts),
        "false_cut_pct": 100.0 * len(cuts) / len(rows) if rows else None,
        "answered_after_cut": sum(bool(r["answered"]) for r in cuts),
        "stop_ms_max": max(stops) if stops else None,
        "answered": sum(bool(r["answered"]) for r in rows),
        "endpoint_ms": _stats([r["endpoint_ms"] for r in rows if r["endpoint_ms"] is not None]),
        "ttff_ms": _stats([r["ttff_ms"] for r in rows if r["ttff_ms"] is not None])}
