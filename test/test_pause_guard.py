"""The pause guard of ``a2llm bench --graph --graph-fixture pause``: false cuts, barge-in
stop times and answer latencies per question (on a scripted replay result), the fast
turn-taking parameter file, and the graph replay itself (default checkpoint)."""
import json
import types

import numpy as np
import pytest

from a2llm_ros.tools.bench.graph_pauses import guard_rows, guard_summary
from a2llm_ros.tools.rosgraph.graph_run import SOURCE_SPEECH, TurnResult


def _turn(turn_id, t_thinking, first_flame, audio_recv):
    return TurnResult(turn_id=turn_id, states=[], t_thinking=t_thinking,
                      first_flame=first_flame, audio_recv=list(audio_recv),
                      frame_recv=np.array(audio_recv[:1]))


def _result(turns, chunks=()):
    side = {"utterances": [
        {"text": "a b", "onset_s": 1.0, "offset_s": 3.0, "pause_s": [2.0, 2.45]},
        {"text": "c d", "onset_s": 6.0, "offset_s": 8.0, "pause_s": [7.0, 7.3]}]}
    # replayed at 2x from monotonic 100 s: bag second x is at 100 + x / 2
    return types.SimpleNamespace(config=types.SimpleNamespace(sidecar=side, rate=2.0),
                                 bag_origin=100.0, turns=turns, chunks=list(chunks))


def test_guard_counts_a_false_cut_its_stop_and_the_whole_answer():
    turns = [_turn(1, 101.10, 101.16, [101.16, 101.20, 101.26]),  # before the end (101.5)
             _turn(2, 101.70, 101.78, [101.78]),                   # the answer, 200 ms after
             _turn(3, 104.12, 104.20, [104.2])]                    # 2nd question, in time
    res = _result(turns, chunks=[(101.30, 0, 1, 0, SOURCE_SPEECH, 5)])
    rows = guard_rows(res)
    assert [r["false_cut"] for r in rows] == [True, False]
    assert rows[0]["pause_ms"] == pytest.approx(450.0)
    # the voice came back at 100 + 2.45 / 2 = 101.225; the last cut message at 101.30
    assert rows[0]["stop_ms"] == pytest.approx(75.0)
    assert rows[0]["endpoint_ms"] == pytest.approx(200.0)
    assert rows[0]["ttff_ms"] == pytest.approx(280.0)
    assert rows[1]["stop_ms"] is None and rows[1]["ttff_ms"] == pytest.approx(200.0)
    summary = guard_summary(rows)
    assert (summary["false_cuts"], summary["answered_after_cut"], summary["answered"]) == (1, 1, 2)
    assert summary["false_cut_pct"] == 50.0 and summary["stop_ms_max"] == pytest.approx(75.0)
    assert summary["ttff_ms"]["max"] == pytest.approx(280.0)


def test_guard_reports_a_question_never_answered_after_its_end():
    rows = guard_rows(_result([_turn(1, 101.1, 101.2, [101.2])]))  # cut, never answered
    assert rows[0]["false_cut"] and not rows[0]["answered"] and rows[0]["stop_ms"] == 0.0
    assert guard_summary(rows)["answered"] == 0
    assert guard_rows(types.SimpleNamespace(config=types.SimpleNamespace(sidecar={}, rate=1.0),
                                            bag_origin=None, turns=[], chunks=[])) == []


def test_fast_turns_file_holds_valid_node_parameters():
    from a2llm_ros.conversation.vad import VadConfig
    from a2llm_ros.ros.params import A2llmNodeConfig, build_config
    from a2llm_ros.tools.bench.turns import node_overrides, vad_overrides
    from a2llm_ros.tools.training.end_of_turn import PAD_MS
    values = node_overrides("fast_turns.yaml")
    cfg = build_config(A2llmNodeConfig(), values)
    assert cfg.vad.end_of_turn and cfg.vad.speculate_after_ms > 0
    assert cfg.vad.speech_pad_ms == PAD_MS  # the padding the head is trained with
    from a2llm_ros.checkpoint_files import DEFAULT_CHECKPOINT
    from a2llm_ros.conversation.end_of_turn import EndOfTurnHead, load_end_of_turn
    shipped = load_end_of_turn(DEFAULT_CHECKPOINT)
    assert shipped.pad_ms == PAD_MS
    assert EndOfTurnHead.from_dict(shipped.to_dict()).pad_ms == PAD_MS
    assert cfg.vad.min_silence_ms > 600.0  # the fallback outlasts the fixture's pauses
    assert VadConfig(**vad_overrides()) == cfg.vad


def test_bringup_reads_the_turn_parameter_file_after_the_main_one():
    import argparse

    from a2llm_ros.tools.rosgraph import bringup
    parser = argparse.ArgumentParser()
    bringup.add_arguments(parser)
    argv = bringup.ros_arguments(parser.parse_args(["--turn-config", "fast_turns.yaml"]))
    files = [argv[i + 1] for i, a in enumerate(argv) if a == "--params-file"]
    assert [f.rsplit("/", 1)[-1] for f in files] == ["a2llm.yaml", "fast_turns.yaml"]


def test_bench_graph_refuses_a_bag_and_the_pause_fixture_together(tmp_path, capsys):
    from a2llm_ros.tools.cli import main
    rc = main(["bench", "--graph", "--checkpoint", "default", "--graph-fixture", "pause",
               "--graph-bag", str(tmp_path / "bag"), "--graph-out", str(tmp_path)])
    assert rc == 2 and "exclude each other" in capsys.readouterr().err


@pytest.mark.ros
@pytest.mark.parametrize("layout", [[], ["--processes"]], ids=["in-process", "per-node"])
def test_bench_graph_pause_fixture_reports_the_guard(default_model, layout, tmp_path, capsys):
    """Two pause-fixture questions through the graph with fast turn-taking, the nodes in
    this process or each in its own (the launch layout): every question answered after
    its true end, and the table printed.  (``default_model``: skips without the shipped
    checkpoint.)"""
    from conftest import require_ros
    require_ros()
    from a2llm_ros.tools.cli import main
    json_path = tmp_path / "graph.json"
    rc = main(["bench", "--graph", "--checkpoint", "default", "--graph-fixture", "pause",
               "--graph-questions", "2", "--speech-tokens", "25",
               "--graph-turn-config", "fast_turns.yaml", "--json", str(json_path),
               "--graph-out", str(tmp_path)] + layout)
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "| Run | False cuts |" in stdout
    report = json.loads(json_path.read_text())
    guard, rows = report["pause_guard"], report["pause_questions"]
    assert guard["questions"] == 2 and guard["answered"] == 2
    assert [r["pause_ms"] for r in rows] == pytest.approx([300.0, 450.0], abs=1.0)
    for row in rows:
        assert 0 < row["endpoint_ms"] < row["ttff_ms"] < 1500.0


def test_plain_fixture_bag_holds_the_first_questions_spoken_in_one_go(tmp_path):
    """``--graph-fixture plain``: the first N of the 50 questions, one utterance each (no
    pause inside), answer time apart; N outside 1..50 is refused."""
    from a2llm_ros.tools.bench.graph_pauses import PLAIN_GAP_S, write_plain_bag
    from a2llm_ros.tools.data.qa_text import QA_PAIRS
    bag, side = write_plain_bag(tmp_path, 3, 1.0)
    utts = side["utterances"]
    assert [u["text"] for u in utts] == [p.question for p in QA_PAIRS[:3]]
    assert all("pause_s" not in u for u in utts)
    for a, b in zip(utts, utts[1:]):
        assert b["onset_s"] - a["offset_s"] >= 1.0 + PLAIN_GAP_S - 0.01
    with pytest.raises(ValueError, match="1..50"):
        write_plain_bag(tmp_path, 51, 1.0)
