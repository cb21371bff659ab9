"""``a2llm bench --graph``: latency of the whole ROS graph, from bag replay.

A bag of spoken questions (the ``conversation`` fixture's two questions,
repeated ``--runs`` times, each followed by enough silence for its answer;
or ``--graph-bag``) is replayed into ``a2llm_node`` + ``flame_retarget_node``
in one process (:mod:`a2llm_ros.tools.rosgraph.graph_run`).  Every answer has exactly
``--speech-tokens`` speech tokens (min = max, as in the core benchmark).  Per
turn:

* ``ttfa_ms`` / ``ttff_ms``: end of the user's speech in the bag -> first speech
  audio chunk / first FLAME chunk published (received by a subscriber in the
  process); ``endpoint_ms``: -> the node's end of utterance (VAD silence wait);
* ``graph_ttfa_ms``: the node's generator start (end of utterance) -> first
  audio published; ``inproc_ttfa_ms``: the same question wave (as the node's
  end-pointer cut it) through ``StreamingGenerator`` in-process, start -> first
  audio chunk ready; ``ros_overhead`` = ``graph_ttfa_ms / inproc_ttfa_ms``;
* ``rtf``: the node's generator time / answer audio duration;
* FLAME<->audio skew: ``stamp_skew_ms`` (frame stamp - stamp of its audio sample,
  0 by design) and ``arrival_skew_ms`` (frame k received - audio of frame k
  received), mean and max |.|;
* CPU (100 % = one core) and RSS of the process over the replay (psutil).

Writes ``graph_bench.json``, ``graph_bench.md`` and ``graph_bench.png`` to
``--graph-out`` (default ``bench_out``; ``--json`` names the JSON) and prints
the table.

Layouts (:data:`LAYOUTS`): by default the nodes run in this process
(``in-process``, :func:`a2llm_ros.tools.rosgraph.graph_run.run_graph`).  ``--processes``
runs every node in its own process from the installed executables, as the
launch file starts them (``per-node``, :mod:`a2llm_ros.tools.rosgraph.graph_procs`); this
process then only plays the bag and records the outputs, and the report adds
CPU, shutdown time and exit status per process (the generator-side figures
``graph_ttfa_ms``, ``inproc_ttfa_ms``, ``rtf`` need the in-process probe and
stay empty).  ``--graph-preview on`` adds ``face_preview_node`` and a
``face_marker`` subscriber (as RViz; the preview renders only when watched).

``--graph-compare`` measures every layout of ``--graph-layouts`` (default all:
``in-process``, ``one-process`` = ``a2llm bringup`` in a child process,
``per-node``), each with the preview off and on (``--graph-preview``, default
``both``), on the same question bag, and writes ``graph_compare.json`` /
``graph_compare.md``: end of speech -> first FLAME (p50, max), output lateness
(speech audio and FLAME received vs their presentation stamps, max), CPU per
process (% of one core over the replay) and shutdown time per process (SIGINT
-> exit, with the exit status).  Process logs go to ``<out>/graph_logs/``.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from a2llm_ros.constants import SPEECH_TOKEN_RATE
from a2llm_ros.tools.bench.graph_pauses import FIXTURES, guard_rows, guard_summary

__all__ = ["add_graph_arguments", "run_graph", "graph_metrics", "summarise", "TURN_KEYS"]

QUESTIONS = ("What is your name?", "How many legs does a spider have?")
#: Silence after a question besides its answer: end-pointing + first output + margin (s).
GAP_EXTRA_S = 3.0
DEFAULT_OUT = "bench_out"
TURN_KEYS = ("endpoint_ms", "ttfa_ms", "ttff_ms", "graph_ttfa_ms", "inproc_ttfa_ms",
             "ros_overhead", "rtf", "stamp_skew_mean_ms", "stamp_skew_max_ms",
             "arrival_skew_mean_ms", "arrival_skew_max_ms")
STATS = ("mean", "p50", "p95", "max")
IN_PROCESS = "in-process"
#: ``--graph-layouts`` values: this process, ``a2llm bringup`` as a child, one per node.
LAYOUTS = (IN_PROCESS, "one-process", "per-node")
PREVIEW_CHOICES = ("off", "on", "both")
#: Short names of the processes in the comparison table.
SHORT_NAMES = {"a2llm_node": "a2llm", "flame_retarget_node": "retarget",
               "face_preview_node": "preview", "bringup": "all nodes", "client": "client"}


def add_graph_arguments(parser) -> None:
    """Options of ``--graph`` (``run_graph`` also works without them: defaults apply)."""
    parser.add_argument("--graph-out", default=None,
                        help=f"--graph: output directory (default {DEFAULT_OUT})")
    parser.add_argument("--graph-bag", default=None,
                        help="--graph: replay this bag (sidecar <bag>.json) instead of the "
                             "generated question bag")
    parser.add_argument("--graph-rate", type=float, default=1.0, help="--graph: replay speed")
    parser.add_argument("--graph-backend", default="auto",
                        help="--graph: a2llm_node backend.kind (default auto)")
    parser.add_argument("--graph-timeout", type=float, default=600.0,
                        help="--graph: give up after this many seconds of replay")
    parser.add_argument("--processes", action="store_true",
                        help="--graph: every node in its own process from the installed "
                             "executables, as the launch file starts them (default: all "
                             "nodes in this process)")
    parser.add_argument("--graph-preview", choices=PREVIEW_CHOICES, default=None,
                        help="--graph: face_preview_node (with a face_marker subscriber, as "
                             "RViz) off or on; --graph-compare: off, on or both (default "
                             "off; both with --graph-compare)")
    parser.add_argument("--graph-compare", action="store_true",
                        help="--graph: measure every layout of --graph-layouts with the "
                             "preview off and on and report them side by side")
    parser.add_argument("--graph-param", dest="graph_params", action="append", default=[],
                        metavar="NAME=VALUE",
                        help="--graph: an a2llm_node parameter (YAML value), e.g. "
                             "vad.speculate_after_ms=200; repeatable")
    parser.add_argument("--graph-fixture", choices=FIXTURES, default="questions",
                        help="--graph: the bench's questions (default), 'pause': the pause "
                             "fixture (held-out voice, a 300-600 ms pause inside each "
                             "question) with false cuts, barge-in stops and latencies per "
                             "question (a2llm_ros/tools/bench/graph_pauses.py), or 'plain': "
                             "the same questions spoken in one go by the bench's voice")
    parser.add_argument("--graph-questions", type=int, default=50,
                        help="--graph-fixture pause/plain: the first N of the 50 questions")
    parser.add_argument("--graph-turn-config", default=None, metavar="FILE",
                        help="--graph: a2llm_node parameters from this file too (a path or "
                             "a name in config/, e.g. fast_turns.yaml), before --graph-param")
    parser.add_argument("--graph-layouts", default=",".join(LAYOUTS),
                        help=f"--graph-compare: comma-separated layouts out of "
                             f"{', '.join(LAYOUTS)} (default all)")


def _opt(args, name, default):
    value = getattr(args, name, None)
    return default if value is None else value


# ----------------------------------------------------------------------------- the run

def run_graph(args) -> int:
    """``a2llm bench --graph``: replay, measure, compare in-process, write and print."""
    from a2llm_ros.checkpoint_files import resolve_checkpoint
    try:
        resolve_checkpoint(args.checkpoint)
    except FileNotFoundError as exc:
        hint = " (build it with `make default-checkpoint`)" if args.checkpoint == "default" \
            else ""
        print(f"a2llm bench --graph: {exc}{hint}", file=sys.stderr)
        return 1
    try:
        from a2llm_ros.tools.rosgraph import graph_run as gr
    except ImportError as exc:
        print(f"a2llm bench --graph: the ROS 2 environment is not loaded ({exc}); source "
              ".venv/a2llm_env.sh first", file=sys.stderr)
        return 2
    out = Path(_opt(args, "graph_out", None) or (os.path.dirname(args.json) if getattr(
        args, "json", None) else DEFAULT_OUT) or ".")
    out.mkdir(parents=True, exist_ok=True)
    tokens = int(_opt(args, "speech_tokens", 75))
    if _opt(args, "graph_bag", None) and _opt(args, "graph_fixture", "questions") != "questions":
        print("a2llm bench --graph: --graph-bag and --graph-fixture pause/plain exclude each "
              "other", file=sys.stderr)
        return 2
    bag, sidecar = _bench_bag(args, out, tokens / SPEECH_TOKEN_RATE)
    if _opt(args, "graph_compare", False):
        return run_compare(args, out, bag, sidecar, tokens)
    preview = _opt(args, "graph_preview", "off")
    if preview == "both":
        print("a2llm bench --graph: --graph-preview both needs --graph-compare", file=sys.stderr)
        return 2
    layout = "per-node" if _opt(args, "processes", False) else IN_PROCESS
    cfg = graph_config(args, bag, sidecar, tokens, preview == "on",
                       keep_questions=layout == IN_PROCESS)
    print(f"a2llm bench --graph: replaying {bag} ({len(sidecar['utterances'])} questions, "
          f"answers of {tokens} speech tokens) through {', '.join(_node_names(cfg))} "
          f"({layout})")
    try:
        res = run_layout(cfg, layout, out / "graph_logs" / layout)
    except gr.GraphStartError as exc:
        print(f"a2llm bench --graph: {exc}", file=sys.stderr)
        return 1
    inproc = (inprocess_latency(res, warmup=int(_opt(args, "warmup", 1)))
              if layout == IN_PROCESS else {})
    report = build_report(res, inproc, gr, args, tokens)
    _write(report, res, out, args)
    return 0 if report["turns"] else 1


def graph_config(args, bag, sidecar, tokens: int, preview: bool, namespace: str = "",
                 keep_questions: bool = False):
    """The :class:`~a2llm_ros.tools.rosgraph.graph_run.GraphConfig` of a bench run (retarget on;
    ``preview``: face_preview_node and a face_marker subscriber)."""
    from a2llm_ros.tools.rosgraph import graph_run as gr
    return gr.GraphConfig(
        bag=str(bag), checkpoint=args.checkpoint, sidecar=sidecar, namespace=namespace,
        rate=float(_opt(args, "graph_rate", 1.0)), retarget=True, preview=preview,
        watch_markers=preview, keep_questions=keep_questions,
        timeout_s=float(_opt(args, "graph_timeout", 600.0)),
        params={"generation.max_speech_tokens": tokens, "generation.min_speech_tokens": tokens,
                "model.threads": int(_opt(args, "threads", 1)),
                "backend.kind": str(_opt(args, "graph_backend", "auto")),
                **turn_config_params(_opt(args, "graph_turn_config", None)),
                **graph_params(_opt(args, "graph_params", []))})


def turn_config_params(config: Optional[str]) -> dict:
    """a2llm_node parameters of ``--graph-turn-config`` ({} without one)."""
    if not config:
        return {}
    from a2llm_ros.tools.bench.turns import node_overrides
    return node_overrides(config)


def graph_params(items: List[str]) -> dict:
    """``NAME=VALUE`` options -> {name: value} (values parsed as YAML scalars)."""
    import yaml
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--graph-param {item!r}: expected NAME=VALUE")
        out[name.strip()] = yaml.safe_load(value)
    return out


def _node_names(cfg) -> List[str]:
    return ["a2llm_node"] + (["flame_retarget_node"] if cfg.retarget else []) \
        + (["face_preview_node"] if cfg.preview else [])


def run_layout(cfg, layout: str, log_dir: Path):
    """One replay in ``layout`` (:data:`LAYOUTS`): a GraphResult."""
    if layout == IN_PROCESS:
        from a2llm_ros.tools.rosgraph.graph_run import run_graph as run_in_process
        return run_in_process(cfg)
    from a2llm_ros.tools.rosgraph.graph_procs import run_graph_processes
    return run_graph_processes(cfg, layout, log_dir)


def _bench_bag(args, out: Path, answer_s: float):
    """(bag, sidecar): --graph-bag, or the generated question bag."""
    from a2llm_ros.tools.rosgraph.graph_run import load_sidecar, write_question_bag
    given = _opt(args, "graph_bag", None)
    fixture = _opt(args, "graph_fixture", "questions")
    if fixture in ("pause", "plain"):
        from a2llm_ros.tools.bench.graph_pauses import write_pause_bag, write_plain_bag
        write = write_pause_bag if fixture == "pause" else write_plain_bag
        return write(out, int(_opt(args, "graph_questions", 50)), answer_s)
    if given:
        side = Path(given).with_name(Path(given).name + ".json")
        return Path(given), load_sidecar(side) if side.exists() else {"utterances": []}
    runs = max(1, int(_opt(args, "runs", 3)))
    questions = list(QUESTIONS) * runs
    bag = out / "graph_bench_questions"
    meta = write_question_bag(bag, questions, answer_s + GAP_EXTRA_S, name=bag.name)
    return bag, meta


def inprocess_latency(res, warmup: int = 1) -> Dict[int, dict]:
    """Turn id -> in-process ``run_once`` figures on the question wave the node got."""
    import torch

    from a2llm_ros.tools.bench.core import run_once
    from a2llm_ros.generation import StreamingGenerator
    from a2llm_ros.ros.a2llm_node import load_backend_for
    cfg = res.node_config
    torch.set_num_threads(max(1, cfg.model.threads))
    waves = {p["turn_id"]: p["question"] for p in res.probe if "question" in p}
    if not waves:
        return {}
    backend = load_backend_for(res.config.checkpoint, cfg.backend)
    gen = StreamingGenerator(backend, cfg.generation)
    first = next(iter(waves.values()))
    for _ in range(max(0, warmup)):
        run_once(gen, first)
    out = {}
    for turn_id, wave in waves.items():
        figures = run_once(gen, wave)
        figures.pop("steps", None)
        out[turn_id] = figures
    return out


# ----------------------------------------------------------------------------- figures

def _abs_stats(values: np.ndarray):
    if not len(values):
        return None, None
    return float(np.mean(values)), float(np.max(np.abs(values)))


def graph_metrics(turn, inproc: Optional[dict]) -> dict:
    """The per-turn figures of one :class:`~a2llm_ros.tools.rosgraph.graph_run.TurnResult`."""
    gen = turn.gen or {}
    graph_ttfa = None
    if gen.get("t_start") is not None and turn.first_audio is not None:
        graph_ttfa = 1000.0 * (turn.first_audio - gen["t_start"])
    in_ttfa = (inproc or {}).get("ttfa_ms")
    stamp_mean, stamp_max = _abs_stats(turn.stamp_skew_ms())
    arrival_mean, arrival_max = _abs_stats(turn.arrival_skew_ms())
    return {
        "turn": turn.turn_id, "question": turn.question_text,
        "question_s": gen.get("question_s"), "answer_s": turn.audio_s,
        "end": "interrupted" if turn.interrupted else (turn.end_reason or "unfinished"),
        "endpoint_ms": turn.latency_ms("t_thinking"),
        "ttfa_ms": turn.latency_ms("first_audio"), "ttff_ms": turn.latency_ms("first_flame"),
        "ttft_ms": turn.latency_ms("first_text"),
        "graph_ttfa_ms": graph_ttfa, "inproc_ttfa_ms": in_ttfa,
        "inproc_ttff_ms": (inproc or {}).get("ttff_ms"),
        "inproc_rtf": (inproc or {}).get("rtf"),
        "ros_overhead": (graph_ttfa / in_ttfa) if graph_ttfa and in_ttfa else None,
        "rtf": turn.generation_rtf(),
        "stamp_skew_mean_ms": stamp_mean, "stamp_skew_max_ms": stamp_max,
        "arrival_skew_mean_ms": arrival_mean, "arrival_skew_max_ms": arrival_max,
    }


def summarise(rows: List[dict], keys=TURN_KEYS) -> Dict[str, Dict[str, Optional[float]]]:
    """key -> {mean, p50, p95, max} over the turns where the value is known."""
    out = {}
    for key in keys:
        values = np.array([r[key] for r in rows if r.get(key) is not None], np.float64)
        out[key] = ({s: None for s in STATS} if not len(values) else
                    {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
                     "p95": float(np.percentile(values, 95)), "max": float(values.max())})
    return out


def build_report(res, inproc: Dict[int, dict], gr, args, tokens: int) -> dict:
    """Everything written to graph_bench.json."""
    import datetime
    rows = [graph_metrics(t, inproc.get(t.turn_id)) for t in res.turns]
    return {
        **pause_fields(res),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "processor": platform.processor() or platform.machine()},
        "checkpoint": args.checkpoint, "backend": res.backend_kind,
        "speech_tokens": tokens, "answer_s": tokens / SPEECH_TOKEN_RATE,
        "rate": res.config.rate, "bag": str(res.config.bag), "timed_out": res.timed_out,
        "questions": len(res.utterance_ends), "turns": rows, "summary": summarise(rows),
        "resources": res.resource_summary(), "warmup_s": res.warmup_s,
        "layout": res.layout, "preview": res.config.preview, "lateness": res.lateness_ms(),
        "processes": process_rows(res),
        "dropped": {k: v for k, v in res.node_values.items()
                    if k.startswith(("input_dropped.", "session.dropped", "output."))},
        "definitions": {
            "question_end": "end of the user's speech in the bag (fixture sidecar)",
            "ttfa_ms": "question end -> first speech audio chunk received",
            "ttff_ms": "question end -> first speech FLAME chunk received",
            "graph_ttfa_ms": "node generator start (end of utterance) -> first audio received",
            "inproc_ttfa_ms": "same question wave, StreamingGenerator in-process: start -> "
                              "first audio chunk ready",
            "ros_overhead": "graph_ttfa_ms / inproc_ttfa_ms",
            "cpu": "process CPU %, 100 = one core (whole graph: node, retarget, player, "
                   "collector)" if res.layout == IN_PROCESS else
                   "CPU %, 100 = one core, of the node processes together (per process: "
                   "processes)",
            "lateness": LATENESS_DEFINITION},
    }


LATENESS_DEFINITION = ("receive time minus presentation stamp (ROS time) of speech audio and "
                       "FLAME (flame/frames, flame/chunks) messages during the replay; "
                       "negative = ahead (output.lead_s)")


def process_rows(res) -> List[dict]:
    """Per-process figures over the replay (node processes, then the client); in-process:
    one row for this process (nodes, player and collector together)."""
    t0, t1 = res.t_play_start, res.t_end
    if not res.processes:
        use = res.resource_summary()
        return [{"name": IN_PROCESS, "nodes": _node_names(res.config),
                 "cpu_pct": use.get("cpu_mean_pct"), "rss_peak_mb": use.get("rss_peak_mb"),
                 "shutdown_s": None, "exit_code": None, "killed": False,
                 "includes_client": True}]
    rows = [p.summary(t0, t1) for p in res.processes]
    return rows + ([res.client.summary(t0, t1)] if res.client is not None else [])


# ----------------------------------------------------------------------------- output

TABLE = (("turn", "Turn", "{}"), ("endpoint_ms", "End-point ms", "{:.0f}"),
         ("ttfa_ms", "TTFA audio ms", "{:.0f}"), ("ttff_ms", "TTFA FLAME ms", "{:.0f}"),
         ("graph_ttfa_ms", "Graph gen->audio ms", "{:.0f}"),
         ("inproc_ttfa_ms", "In-process ms", "{:.0f}"), ("ros_overhead", "ROS overhead x",
                                                         "{:.2f}"),
         ("rtf", "RTF", "{:.2f}"), ("stamp_skew_max_ms", "Skew stamp max ms", "{:.1f}"),
         ("arrival_skew_mean_ms", "Skew arrival mean ms", "{:+.1f}"),
         ("arrival_skew_max_ms", "Skew arrival max ms", "{:.1f}"))


def _cell(value, fmt: str) -> str:
    if value is None:
        return "\u2014"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown(report: dict) -> str:
    """The table (per turn, then mean/p50/p95/max) and the run facts."""
    lines = ["| " + " | ".join(h for _, h, _ in TABLE) + " |",
             "|" + "|".join("---:" for _ in TABLE) + "|"]
    for row in report["turns"]:
        lines.append("| " + " | ".join(_cell(row.get(k), f) for k, _, f in TABLE) + " |")
    for stat in STATS:
        cells = [f"**{stat}**"] + [_cell(report["summary"].get(k, {}).get(stat), f)
                                   for k, _, f in TABLE[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    use = report["resources"]
    facts = [f"checkpoint `{report['checkpoint']}`, backend {report['backend']}, answers "
             f"{report['speech_tokens']} speech tokens ({report['answer_s']:.1f} s), replay "
             f"{report['rate']:g}x, {report['machine']['cpu_count']} CPU cores, "
             f"{report['date']}",
             ("" if report.get("layout", IN_PROCESS) == IN_PROCESS else
              "node processes together: ") +
             f"CPU {use.get('cpu_mean_pct', 0):.0f}% mean / {use.get('cpu_max_pct', 0):.0f}% "
             f"max (100% = one core); RSS {use.get('rss_start_mb', 0):.0f} MB at the start, "
             f"{use.get('rss_peak_mb', 0):.0f} MB peak"]
    if report["dropped"]:
        facts.append("counters: " + ", ".join(f"{k}={v}" for k, v in report["dropped"].items()))
    late = report.get("lateness") or {}
    if report.get("pause_guard"):
        facts.append("pause fixture:\n\n" + pause_markdown(
            [(report.get("layout", IN_PROCESS), report["pause_guard"])]))
    facts.append(f"layout {report.get('layout', IN_PROCESS)}; output lateness max: audio "
                 f"{_cell(late.get('audio_max_ms'), '{:+.0f}')} ms, FLAME "
                 f"{_cell(late.get('flame_max_ms'), '{:+.0f}')} ms")
    if report.get("layout", IN_PROCESS) != IN_PROCESS:
        facts += [_process_fact(p) for p in report["processes"]]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {f}" for f in facts) + "\n"


def _process_fact(row: dict) -> str:
    text = (f"process {row['name']}: CPU {_cell(row.get('cpu_pct'), '{:.0f}')}%, RSS peak "
            f"{_cell(row.get('rss_peak_mb'), '{:.0f}')} MB")
    if row.get("exit_code") is not None:
        text += (f", SIGINT -> exit {_cell(row.get('shutdown_s'), '{:.2f}')} s, status "
                 f"{row['exit_code']}" + (" (killed)" if row.get("killed") else ""))
    return text


def _write(report: dict, res, out: Path, args) -> None:
    json_path = Path(getattr(args, "json", None) or out / "graph_bench.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str))
    table = markdown(report)
    definitions = "\n".join(f"- **{k}**: {v}" for k, v in report["definitions"].items())
    (out / "graph_bench.md").write_text("# a2llm bench --graph\n\n" + table + "\nDefinitions:\n\n"
                                        + definitions + "\n")
    plot(report, res, out / "graph_bench.png")
    print(table)
    print(f"wrote {json_path}, {out / 'graph_bench.md'}, {out / 'graph_bench.png'}")


def plot(report: dict, res, path: Path) -> None:
    """Per-turn latency bars and CPU / RSS over the replay."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 7), dpi=100)
    FigureCanvasAgg(fig)
    ax, ax_cpu = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    rows = report["turns"]
    keys = (("endpoint_ms", "end-pointing"), ("ttfa_ms", "TTFA audio"),
            ("ttff_ms", "TTFA FLAME"), ("graph_ttfa_ms", "graph: gen start -> audio"),
            ("inproc_ttfa_ms", "in-process TTFA"))
    width = 0.8 / len(keys)
    x = np.arange(len(rows))
    for i, (key, label) in enumerate(keys):
        values = [np.nan if r.get(key) is None else r[key] for r in rows]
        ax.bar(x + (i - len(keys) / 2 + 0.5) * width, values, width, label=label)
    tops = [r.get(k) for r in rows for k, _ in keys if r.get(k) is not None]
    if tops:
        ax.set_ylim(0, 1.35 * max(tops))  # room for the legend
    ax.set_xticks(x)
    ax.set_xticklabels([f"turn {r['turn']}" for r in rows])
    ax.set_ylabel("ms after the question end / generator start")
    ax.legend(fontsize=8, ncol=3)
    ax.set_title(f"a2llm bench --graph: {report['backend']}, {report['answer_s']:.1f} s answers, "
                 f"replay {report['rate']:g}x")
    t0 = res.t_play_start or (res.resources[0][0] if res.resources else 0.0)
    if res.resources:
        t = np.array([r[0] for r in res.resources]) - t0
        ax_cpu.plot(t, [r[1] for r in res.resources], color="tab:blue", label="CPU %")
        ax_mem = ax_cpu.twinx()
        ax_mem.plot(t, [r[2] for r in res.resources], color="tab:red", label="RSS MB")
        ax_mem.set_ylabel("RSS (MB)", color="tab:red")
    for turn in res.turns:
        if turn.question_end is not None:
            ax_cpu.axvline(turn.question_end - t0, color="0.5", ls="--", lw=0.8)
    ax_cpu.set_xlabel("time since the replay started (s); dashed: question ends")
    ax_cpu.set_ylabel("CPU (%, 100 = one core)", color="tab:blue")
    fig.tight_layout()
    fig.savefig(str(path))


# ----------------------------------------------------------------------------- --graph-compare

def parse_layouts(text: str) -> List[str]:
    """``--graph-layouts`` -> layouts (ValueError on an unknown one)."""
    layouts = [x.strip() for x in str(text).split(",") if x.strip()]
    unknown = [x for x in layouts if x not in LAYOUTS]
    if unknown or not layouts:
        raise ValueError(f"unknown layouts {unknown}; known: {', '.join(LAYOUTS)}")
    return layouts


def run_compare(args, out: Path, bag, sidecar, tokens: int) -> int:
    """``--graph-compare``: every layout x preview setting on the same bag; writes
    graph_compare.json / .md and prints the table."""
    try:
        layouts = parse_layouts(_opt(args, "graph_layouts", ",".join(LAYOUTS)))
    except ValueError as exc:
        print(f"a2llm bench --graph-compare: {exc}", file=sys.stderr)
        return 2
    previews = {"off": [False], "on": [True], "both": [False, True]}[
        _opt(args, "graph_preview", "both")]
    runs = []
    for layout in layouts:
        for preview in previews:
            runs.append(compare_run(args, out, bag, sidecar, tokens, layout, preview,
                                    index=len(runs)))
    report = compare_report(args, runs, tokens, len(sidecar.get("utterances", [])))
    json_path = Path(getattr(args, "json", None) or out / "graph_compare.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str))
    table = compare_markdown(report)
    (out / "graph_compare.md").write_text("# a2llm bench --graph --graph-compare\n\n" + table)
    print(table)
    print(f"wrote {json_path}, {out / 'graph_compare.md'}; process logs in "
          f"{out / 'graph_logs'}")
    return 0 if all(_all_answered(r) for r in runs) else 1


def _all_answered(run: dict) -> bool:
    guard = run.get("pause_guard")
    if guard:
        return guard["answered"] == guard["questions"]
    return run.get("answered") == run.get("questions")


def compare_run(args, out: Path, bag, sidecar, tokens: int, layout: str, preview: bool,
                index: int) -> dict:
    """One layout / preview setting: its :func:`compare_row` (or its start-up error)."""
    from a2llm_ros.tools.rosgraph.graph_run import GraphStartError
    tag = f"{layout}_preview-{'on' if preview else 'off'}"
    print(f"a2llm bench --graph-compare: {tag}", flush=True)
    cfg = graph_config(args, bag, sidecar, tokens, preview,
                       namespace=f"/graph_bench_{os.getpid()}_{index}")
    try:
        res = run_layout(cfg, layout, out / "graph_logs" / tag)
    except GraphStartError as exc:
        print(f"a2llm bench --graph-compare: {tag}: {exc}", file=sys.stderr)
        return {"layout": layout, "preview": preview, "error": str(exc),
                "questions": len(sidecar.get("utterances", [])), "answered": 0}
    return compare_row(res)


def compare_row(res) -> dict:
    """The comparison figures of one run (turn figures as :func:`graph_metrics`)."""
    rows = [graph_metrics(t, None) for t in res.turns]
    summary = summarise(rows, ("endpoint_ms", "ttfa_ms", "ttff_ms"))
    return {"layout": res.layout, "preview": res.config.preview, "backend": res.backend_kind,
            "questions": len(res.utterance_ends), "answered": len(res.answered),
            "timed_out": res.timed_out, "endpoint_ms": summary["endpoint_ms"],
            "ttfa_ms": summary["ttfa_ms"], "ttff_ms": summary["ttff_ms"],
            "lateness_ms": res.lateness_ms(), "published_late": published_late(res),
            "processes": process_rows(res),
            "face_commands": res.face_commands, "markers": len(res.markers),
            "lifecycle_state": res.lifecycle_state, "turns": rows,
            **pause_fields(res)}


def pause_fields(res) -> dict:
    """``pause_guard`` (summary) and ``pause_questions`` (rows) of a pause-fixture replay;
    {} for other bags."""
    rows = guard_rows(res)
    return {"pause_guard": guard_summary(rows), "pause_questions": rows} if rows else {}


def published_late(res) -> dict:
    """The node's own count of outputs it published after their presentation stamp (more
    than the scheduler's 20 ms tolerance) and the worst such lateness, from its last
    diagnostics (``output.late_*``; absent keys: none late)."""
    values = res.last_diagnostics()
    worst = [int(v) for k, v in values.items() if k.startswith("output.late_ms_max.")]
    counts = [int(v) for k, v in values.items()
              if k.startswith("output.late_") and not k.startswith("output.late_ms_max.")]
    return {"diagnostics": bool(values), "count": sum(counts), "max_ms": max(worst, default=0)}


def compare_report(args, runs: List[dict], tokens: int, questions: int) -> dict:
    import datetime
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "processor": platform.processor() or platform.machine()},
        "checkpoint": args.checkpoint, "speech_tokens": tokens,
        "answer_s": tokens / SPEECH_TOKEN_RATE, "rate": float(_opt(args, "graph_rate", 1.0)),
        "questions": questions, "runs": runs,
        "definitions": {
            "ttff_ms": "end of the user's speech in the bag -> first speech FLAME chunk "
                       "received by the client",
            "lateness": LATENESS_DEFINITION,
            "published_late": "outputs a2llm_node itself published more than 20 ms after "
                              "their presentation stamp (its output.late_* diagnostics): "
                              "count and worst lateness; the rest of the receive lateness "
                              "is delivery",
            "cpu_pct": "CPU seconds / wall seconds over the replay, 100 = one core, per "
                       "process (in-process: the bench process, nodes + player + collector)",
            "shutdown_s": "SIGINT -> process exit (all processes signalled at once), exit "
                          "status in brackets",
            "layouts": "in-process: nodes, bag player and collector in the bench process; "
                       "one-process: `a2llm bringup` in a child process; per-node: each "
                       "node's executable in its own process (launch file); the client "
                       "(player + collector) runs in the bench process"}}


COMPARE_HEADER = ("Layout", "Preview", "Answered", "End-pointing p50 ms",
                  "EoS → FLAME p50 / p95 / max ms",
                  "Audio late max ms", "FLAME late max ms", "Published late (node)",
                  "CPU % of one core", "Shutdown s (exit status)")


def _short(row: dict) -> str:
    if row.get("includes_client"):
        return "nodes + client"
    return SHORT_NAMES.get(row["name"], row["name"])


def _cpu_cell(procs: List[dict]) -> str:
    return ", ".join(f"{_short(p)} {_cell(p.get('cpu_pct'), '{:.0f}')}" for p in procs)


def _shutdown_cell(procs: List[dict]) -> str:
    cells = [f"{_short(p)} {_cell(p.get('shutdown_s'), '{:.2f}')} ({p['exit_code']}"
             + (", killed)" if p.get("killed") else ")")
             for p in procs if p.get("exit_code") is not None]
    return ", ".join(cells) or "\u2014"


def _published_cell(late: dict) -> str:
    """``n, max +x ms`` published late by the node, ``none`` or ``?`` (no diagnostics)."""
    if not late.get("diagnostics"):
        return "?"
    return f"{late['count']}, max +{late['max_ms']} ms" if late["count"] else "none"


def compare_markdown(report: dict) -> str:
    """The comparison table (a row per layout x preview) and the run facts."""
    lines = ["| " + " | ".join(COMPARE_HEADER) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * 6 + ["---"] * 2) + "|"]
    for run in report["runs"]:
        head = [run["layout"], "on" if run["preview"] else "off"]
        if "error" in run:
            cells = head + [f"failed: {run['error'][:80]}"] + [""] * 7
            lines.append("| " + " | ".join(cells) + " |")
            continue
        late, ttff = run["lateness_ms"], run["ttff_ms"]
        cells = head + [f"{run['answered']}/{run['questions']}",
                        _cell(run["endpoint_ms"].get("p50"), "{:.0f}"),
                        " / ".join(_cell(ttff.get(k), "{:.0f}") for k in ("p50", "p95", "max")),
                        _cell(late.get("audio_max_ms"), "{:+.0f}"),
                        _cell(late.get("flame_max_ms"), "{:+.0f}"),
                        _published_cell(run.get("published_late", {})),
                        _cpu_cell(run["processes"]), _shutdown_cell(run["processes"])]
        lines.append("| " + " | ".join(cells) + " |")
    backends = sorted({r.get("backend", "") for r in report["runs"] if r.get("backend")})
    facts = [f"{report['date']}, {report['machine']['cpu_count']} CPU cores "
             f"({report['machine']['processor']}), checkpoint `{report['checkpoint']}`, "
             f"backend {', '.join(backends) or '?'}, {report['questions']} questions, answers "
             f"{report['speech_tokens']} speech tokens ({report['answer_s']:.1f} s), replay "
             f"{report['rate']:g}x"]
    facts += [f"**{k}**: {v}" for k, v in report["definitions"].items()]
    guards = [(f"{r['layout']}, preview {'on' if r['preview'] else 'off'}", r["pause_guard"])
              for r in report["runs"] if r.get("pause_guard")]
    pauses = ("\n" + pause_markdown(guards) + "\n") if guards else ""
    return "\n".join(lines) + "\n" + pauses + "\n" + "\n".join(f"- {f}" for f in facts) + "\n"


PAUSE_HEADER = ("Run", "False cuts", "Cut questions answered after their end",
                "Cut answer stopped (max)",
                "End-pointing p50 / p95 ms", "EoS → FLAME p50 / p95 / max ms")


def pause_markdown(guards) -> str:
    """The pause-fixture table: one row per (name, :func:`guard_summary`)."""
    lines = ["| " + " | ".join(PAUSE_HEADER) + " |", "|---|" + "---:|" * 5]
    for name, g in guards:
        ep, ff = g["endpoint_ms"], g["ttff_ms"]
        lines.append(
            f"| {name} | {g['false_cuts']}/{g['questions']} "
            f"({_cell(g['false_cut_pct'], '{:.0f}')} %)"
            f" | {g['answered_after_cut']}/{g['false_cuts']} "
            f"| {_cell(g['stop_ms_max'], '{:.0f} ms')} "
            f"| {_cell(ep['p50'], '{:.0f}')} / {_cell(ep['p95'], '{:.0f}')} "
            f"| {_cell(ff['p50'], '{:.0f}')} / {_cell(ff['p95'], '{:.0f}')} / "
            f"{_cell(ff['max'], '{:.0f}')} |")
    return "\n".join(lines) + "\n"
