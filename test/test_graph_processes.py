"""The graph with every node in a process of its own (a2llm_ros.tools.rosgraph.graph_procs).

The nodes start from their installed executables with the launch file's
parameters (parameter file + the launch arguments' values, namespaced); the
test process plays a 2-question bag as a ros-drivers microphone and records the
outputs.  Every question is answered with speech audio and FLAME on one
timeline (as the one-process tests check), the outputs are not late beyond a
loose bound, and every process exits within 2 s of SIGINT with status 0.
``a2llm bench --graph --graph-compare`` runs the one-process (``a2llm bringup``)
and per-node layouts and prints the comparison table.
"""
import ast
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 10                       # 0.4 s answers
SAMPLES = TOKENS * 640            # 16 kHz (the tiny checkpoint's codec rate)
NS_PER_FRAME = 40_000_000
NS_PER_SAMPLE = 62_500
QUESTIONS = ("What is your name?", "How many legs does a spider have?")
#: Silence after each question (s): end-pointing, the answer and a margin.
GAP_S = 2.5
#: The issue's budget from SIGINT to the process's exit (s).
EXIT_BUDGET_S = 2.0
#: Loose bound on output lateness (receive time - presentation stamp): the node publishes
#: speech output.lead_s (0.1 s) ahead; listening frames go out when due, so scheduling
#: delays on a loaded 2-core machine show (324 ms seen beside another test run).  The
#: delivery stalls of docs/graph_benchmark.md (one process + preview) were 2-4 s.
MAX_LATE_MS = 1000.0
PARAMS = {"generation.max_speech_tokens": TOKENS, "generation.min_speech_tokens": TOKENS,
          "backend.kind": "torch", "model.warmup": False}
NODES = ("a2llm_node", "flame_retarget_node", "face_preview_node")


def _ros():
    """Skip unless rclpy, the interfaces and ros-drivers audio messages are there."""
    pytest.importorskip("rclpy", reason="rclpy missing: run through `make test`")
    pytest.importorskip("a2llm_ros.msg", reason="interfaces not built/sourced: run `make test`")
    am = pytest.importorskip("audio_common_msgs.msg", reason="run through `make test`")
    if not hasattr(am, "AudioDataStamped"):
        pytest.skip("the question bag is a ros-drivers bag")
    if not __import__("shutil").which("espeak-ng"):
        pytest.skip("espeak-ng is not installed")


@pytest.fixture(scope="module")
def question_bag(tmp_path_factory):
    _ros()
    from a2llm_ros.tools.rosgraph import graph_run as gr
    bag = tmp_path_factory.mktemp("procs") / "questions"
    return str(bag), gr.write_question_bag(bag, QUESTIONS, GAP_S)


# ----------------------------------------------------------------------------- no ROS graph

def _launch_node_parameters():
    """Node -> {parameter: launch argument} of the dicts in launch/a2llm.launch.py."""
    tree = ast.parse((ROOT / "launch" / "a2llm.launch.py").read_text())
    names = {n.targets[0].id: n.value for n in ast.walk(tree)
             if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}

    def argument(value):
        value = names.get(value.id, value) if isinstance(value, ast.Name) else value
        return next(c.args[0].value for c in ast.walk(value) if isinstance(c, ast.Call)
                    and getattr(c.func, "id", "") == "LaunchConfiguration")

    out = {}
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        if getattr(call.func, "id", None) not in ("Node", "LifecycleNode"):
            continue
        kw = {k.arg: k.value for k in call.keywords}
        (params,) = [e for e in kw["parameters"].elts if isinstance(e, ast.Dict)]
        out[kw["executable"].value] = {k.value: argument(v)
                                       for k, v in zip(params.keys, params.values)}
    return out


def _launch_defaults():
    tree = ast.parse((ROOT / "launch" / "a2llm.launch.py").read_text())
    value = next(n.value for n in tree.body if isinstance(n, ast.Assign)
                 and getattr(n.targets[0], "id", "") == "ARGUMENTS")
    return {k.value: v.elts[0].value for k, v in zip(value.keys, value.values)
            if isinstance(v.elts[0], ast.Constant)}


def test_launch_parameters_mirror_the_launch_file(tmp_path):
    """The harness gives each node what the launch file gives it (with its defaults)."""
    pytest.importorskip("rclpy", reason="rclpy missing: run through `make test`")
    from a2llm_ros.tools.rosgraph import graph_procs as gp
    from a2llm_ros.tools.rosgraph import graph_run as gr
    launch, defaults = _launch_node_parameters(), _launch_defaults()
    assert set(launch) == set(gp.LAUNCH_DEFAULTS) == set(NODES)
    for node, params in launch.items():
        ours = gp.LAUNCH_DEFAULTS[node]
        assert set(params) == set(ours), node
        for name, argument in params.items():
            value = ours[name]
            text = str(value).lower() if isinstance(value, bool) else str(value)
            assert text == defaults[argument], (node, name)

    cfg = gr.GraphConfig(bag="b", checkpoint="/ck", params={"vad.min_silence_ms": 250.0},
                         retarget=True, retarget_params={"preset": "servo_head"},
                         preview=True)
    per_node = gp.launch_parameters(cfg, {"audio.topic": "/ns/audio/audio_stamped"})
    path = gp.write_params_file(tmp_path / "p.yaml", per_node)
    data = yaml.safe_load(path.read_text())
    a2llm = data["/**/a2llm_node"]["ros__parameters"]
    assert a2llm["model"]["checkpoint"] == "/ck" and a2llm["vad"]["min_silence_ms"] == 250.0
    assert a2llm["audio"]["topic"] == "/ns/audio/audio_stamped" and a2llm["autostart"] is True
    assert data["/**/flame_retarget_node"]["ros__parameters"]["preset"] == "servo_head"

    specs = gp.process_specs(gp.PER_NODE, cfg, "/ns", ["base.yaml", str(path)])
    assert [s.name for s in specs] == list(NODES)
    for spec in specs:
        assert Path(spec.argv[0]).name == spec.name
        assert spec.argv[1:] == ["--ros-args", "-r", f"__node:={spec.name}", "-r", "__ns:=/ns",
                                 "--params-file", "base.yaml", "--params-file", str(path)]
    (one,) = gp.process_specs(gp.ONE_PROCESS, cfg, "/ns", ["base.yaml", str(path)])
    assert one.nodes == NODES
    assert one.argv[1:] == ["bringup", "--config", "base.yaml", "--namespace", "/ns",
                            "--preview", "--ros-args", "--params-file", str(path)]


def test_cpu_percent_from_cumulative_samples():
    from a2llm_ros.tools.rosgraph.graph_procs import cpu_pct
    samples = [(0.0, 1.0, 10.0), (1.0, 1.5, 10.0), (2.0, 2.0, 11.0), (3.0, 3.0, 11.0)]
    assert cpu_pct(samples, 1.0, 3.0) == pytest.approx(75.0)
    assert cpu_pct(samples, None, None) == pytest.approx(200.0 / 3.0)
    assert cpu_pct(samples, 2.5, 3.0) is None


# ----------------------------------------------------------------------------- the graph

def _assert_answered_on_one_timeline(res):
    from a2llm_ros.tools.rosgraph import graph_run as gr
    assert not res.timed_out
    assert res.lifecycle_state == "active" and res.threads_alive
    assert [t.question_text for t in res.turns] == list(QUESTIONS)
    for turn in res.turns:
        assert turn.end_state == gr.IDLE and turn.end_reason == "cap", turn.end_reason
        assert sum(turn.audio_sizes) == SAMPLES and turn.n_final == 1
        for (s0, n0), s1 in zip(zip(turn.audio_stamps, turn.audio_sizes),
                                turn.audio_stamps[1:]):
            assert s1 == s0 + n0 * NS_PER_SAMPLE
        assert len(turn.frame_stamps) == turn.chunk_frames == TOKENS
        assert np.abs(turn.stamp_skew_ms()).max() < 1.0      # FLAME k <-> sample 640 k
        assert turn.latency_ms("first_flame") > turn.latency_ms("t_thinking") > 0
    stamps = np.array([f[1] for f in res.frames])
    assert (np.diff(stamps) == NS_PER_FRAME).all(), np.unique(np.diff(stamps))


def _assert_exits_cleanly(rows, budget_s=EXIT_BUDGET_S):
    """Every process: SIGINT -> exit within ``budget_s`` (None: any), status 0."""
    for row in rows:
        assert row["exit_code"] == 0 and not row["killed"], row
        assert budget_s is None or row["shutdown_s"] <= budget_s, row


@pytest.mark.ros
def test_process_per_node_answers_on_time_and_exits_cleanly(checkpoint, question_bag, tmp_path):
    from ros_testing import unique_namespace

    from a2llm_ros.tools.rosgraph import graph_procs as gp
    from a2llm_ros.tools.rosgraph import graph_run as gr
    bag, meta = question_bag
    cfg = gr.GraphConfig(bag=bag, checkpoint=checkpoint, sidecar=meta, params=PARAMS,
                         namespace=unique_namespace("procs"), retarget=True, preview=True,
                         watch_markers=True, timeout_s=90.0)
    res = gp.run_graph_processes(cfg, gp.PER_NODE, tmp_path / "logs")
    rows = [p.summary(res.t_play_start, res.t_end) for p in res.processes]
    late = res.lateness_ms()
    print(f"\nlateness {late}\n" + "\n".join(str(r) for r in rows))

    assert [p.name for p in res.processes] == list(NODES)
    assert len({p.pid for p in res.processes} | {res.client.pid}) == 4
    _assert_answered_on_one_timeline(res)
    assert late["audio_max_ms"] < MAX_LATE_MS and late["flame_max_ms"] < MAX_LATE_MS
    assert late["audio_mean_ms"] < 0  # ahead of presentation on average (output.lead_s)
    assert res.face_commands > 0 and res.markers  # retarget and preview processes worked
    for proc, row in zip(res.processes, rows):
        assert proc.t_ready is not None and row["cpu_pct"] is not None and row["cpu_pct"] > 0
        assert Path(proc.log).stat().st_size > 0
    assert "active: listening" in Path(res.processes[0].log).read_text()
    _assert_exits_cleanly(rows)


@pytest.mark.ros
def test_bench_compares_one_process_with_process_per_node(checkpoint, tmp_path, capsys):
    _ros()
    from a2llm_ros.tools.cli import main
    rc = main(["bench", "--graph", "--graph-compare", "--graph-layouts", "one-process,per-node",
               "--graph-preview", "off", "--checkpoint", checkpoint, "--runs", "1",
               "--speech-tokens", str(TOKENS), "--graph-backend", "torch",
               "--graph-out", str(tmp_path)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "| Layout | Preview | Answered | End-pointing p50 ms | EoS → FLAME p50 / p95" in stdout
    report = json.loads((tmp_path / "graph_compare.json").read_text())
    runs = {r["layout"]: r for r in report["runs"]}
    assert set(runs) == {"one-process", "per-node"}
    names = {layout: [p["name"] for p in run["processes"]] for layout, run in runs.items()}
    assert names == {"one-process": ["bringup", "client"],
                     "per-node": ["a2llm_node", "flame_retarget_node", "client"]}
    for run in runs.values():
        assert run["answered"] == run["questions"] == 2 and not run["timed_out"]
        assert run["ttff_ms"]["p50"] > 0 and run["ttff_ms"]["max"] >= run["ttff_ms"]["p50"]
        assert run["lateness_ms"]["flame_max_ms"] < MAX_LATE_MS
        # the node's own account of late publishing, from its diagnostics
        published = run["published_late"]
        assert published["diagnostics"] and published["max_ms"] < MAX_LATE_MS
        # The node executables end with os._exit within the budget; `a2llm bringup` runs
        # Python's finalisation (0.8-1.0 s idle, 3.3 s seen on a loaded machine).
        budget = EXIT_BUDGET_S if run["layout"] == "per-node" else None
        _assert_exits_cleanly([p for p in run["processes"] if p["name"] != "client"], budget)
    assert (tmp_path / "graph_compare.md").read_text().count("| one-process | off |") == 1
    assert (tmp_path / "graph_logs" / "per-node_preview-off" / "a2llm_node.log").is_file()
