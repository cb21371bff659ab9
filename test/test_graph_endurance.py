"""100 turns in a row through the whole graph with bounded memory (measured and printed).

A bag of 100 short spoken questions (espeak-ng), each followed by enough
silence for a 0.2 s answer, is replayed at 4x into a2llm_node (short
end-pointing, 5-token answers).  Every question must get a complete answer,
the node must stay healthy, and the process RSS must not grow with the turns.
"""
import numpy as np
import pytest
from conftest import require_ros

rclpy = require_ros(audio="ros_drivers")  # the question bag is a ros-drivers bag

from ros_testing import unique_namespace  # noqa: E402

from a2llm_ros.tools.rosgraph import graph_run as gr  # noqa: E402

pytestmark = pytest.mark.ros

TURNS = 100
TOKENS = 5                      # one 200 ms motion segment per answer
PHRASES = ("Hello.", "Why?", "Tell me.", "Really?", "Go on.")
#: Silence after each question (bag time): 1.1 s at 4x, room for end-pointing (0.25 s),
#: the answer's first output and its 0.2 s of playback on a loaded 2-core machine.
GAP_S = 4.4
RATE = 4.0
WARM_TURN = 10                  # memory baseline: after this many turns
MAX_GROWTH_MB = 25.0
MIN_COMPLETE = 70  # answered to the end; the rest are barge-ins (counted, by policy)


def _rss_at(res, t):
    """RSS (MB) of the last resource sample at or before monotonic time ``t``."""
    rows = [r for r in res.resources if r[0] <= t]
    return rows[-1][2] if rows else res.resources[0][2]


def test_hundred_turns_bounded_memory(checkpoint, tmp_path):
    if not __import__("shutil").which("espeak-ng"):
        pytest.skip("espeak-ng is not installed")
    questions = [PHRASES[i % len(PHRASES)] for i in range(TURNS)]
    meta = gr.write_question_bag(tmp_path / "hundred", questions, GAP_S)
    cfg = gr.GraphConfig(
        bag=str(tmp_path / "hundred"), checkpoint=checkpoint, sidecar=meta, rate=RATE,
        namespace=unique_namespace("hundred"), keep_payloads=False, timeout_s=240.0,
        resource_period_s=0.5,
        params={"generation.max_speech_tokens": TOKENS, "generation.min_speech_tokens": TOKENS,
                "vad.min_silence_ms": 250.0, "vad.speech_pad_ms": 100.0,
                "output.diagnostics_period_s": 2.0})
    res = gr.run_graph(cfg)

    ended = [t for t in res.turns if t.end_state is not None]
    complete = [t for t in ended if t.end_state == gr.IDLE and t.end_reason == "cap"
                and sum(t.audio_sizes) == TOKENS * 640 and len(t.frame_stamps) == TOKENS]
    interrupted = sum(t.interrupted for t in res.turns)
    ends = [t.t_end for t in ended]
    base = _rss_at(res, ends[WARM_TURN - 1]) if len(ends) >= WARM_TURN else float("nan")
    final = _rss_at(res, ends[-1]) if ends else float("nan")
    use = res.resource_summary()
    print(f"\n{len(res.turns)} turns ({len(complete)} complete, {interrupted} interrupted) in "
          f"{res.t_end - res.t_play_start:.1f} s; RSS after turn {WARM_TURN}: {base:.1f} MB, "
          f"after turn {len(ends)}: {final:.1f} MB (growth {final - base:+.1f} MB, "
          f"{(final - base) / max(1, len(ends) - WARM_TURN) * 1000:+.0f} kB/turn), peak "
          f"{use['rss_peak_mb']:.1f} MB; CPU mean {use['cpu_mean_pct']:.0f}%")

    assert not res.timed_out, f"only {len(ended)} turns ended"
    assert res.lifecycle_state == "active" and res.threads_alive
    assert [t.question_text for t in res.turns] == questions
    assert len(complete) + interrupted == TURNS and len(complete) >= MIN_COMPLETE
    assert res.node_values["generator_errors"] == "0"
    assert int(res.node_values.get("session.dropped_audio_chunks", 0)) == 0
    assert final - base < MAX_GROWTH_MB
    # The output timeline stayed continuous for all of it.
    stamps = np.array([f[1] for f in res.frames])
    assert (np.diff(stamps) == 40_000_000).all()
