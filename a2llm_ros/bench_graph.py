"""``a2llm bench --graph``: latency of the whole ROS graph, from bag replay.

A bag of spoken questions (the ``conversation`` fixture's two questions,
repeated ``--runs`` times, each followed by enough silence for its answer;
or ``--graph-bag``) is replayed into ``a2llm_node`` + ``flame_retarget_node``
in one process (:mod:`a2llm_ros.ros.graph_run`).  Every answer has exactly
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

__all__ = ["add_graph_arguments", "run_graph", "graph_metrics", "summarise", "TURN_KEYS"]

QUESTIONS = ("What is your name?", "How many legs does a spider have?")
#: Silence after a question besides its answer: end-pointing + first output + margin (s).
GAP_EXTRA_S = 3.0
DEFAULT_OUT = "bench_out"
TURN_KEYS = ("endpoint_ms", "ttfa_ms", "ttff_ms", "graph_ttfa_ms", "inproc_ttfa_ms",
             "ros_overhead", "rtf", "stamp_skew_mean_ms", "stamp_skew_max_ms",
             "arrival_skew_mean_ms", "arrival_skew_max_ms")
STATS = ("mean", "p50", "p95", "max")


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


def _opt(args, name, default):
    value = getattr(args, name, None)
    return default if value is None else value


# ----------------------------------------------------------------------------- the run

def run_graph(args) -> int:
    """``a2llm bench --graph``: replay, measure, compare in-process, write and print."""
    from a2llm_ros.checkpoint import resolve_checkpoint
    try:
        resolve_checkpoint(args.checkpoint)
    except FileNotFoundError as exc:
        hint = " (build it with `make default-checkpoint`)" if args.checkpoint == "default" \
            else ""
        print(f"a2llm bench --graph: {exc}{hint}", file=sys.stderr)
        return 1
    try:
        from a2llm_ros.ros import graph_run as gr
    except ImportError as exc:
        print(f"a2llm bench --graph: the ROS 2 environment is not loaded ({exc}); source "
              ".venv/a2llm_env.sh first", file=sys.stderr)
        return 2
    out = Path(_opt(args, "graph_out", None) or (os.path.dirname(args.json) if getattr(
        args, "json", None) else DEFAULT_OUT) or ".")
    out.mkdir(parents=True, exist_ok=True)
    tokens = int(_opt(args, "speech_tokens", 75))
    bag, sidecar = _bench_bag(args, out, tokens / SPEECH_TOKEN_RATE)
    cfg = gr.GraphConfig(
        bag=str(bag), checkpoint=args.checkpoint, sidecar=sidecar,
        rate=float(_opt(args, "graph_rate", 1.0)), retarget=True, keep_questions=True,
        timeout_s=float(_opt(args, "graph_timeout", 600.0)),
        params={"generation.max_speech_tokens": tokens, "generation.min_speech_tokens": tokens,
                "model.threads": int(_opt(args, "threads", 1)),
                "backend.kind": str(_opt(args, "graph_backend", "auto"))})
    print(f"a2llm bench --graph: replaying {bag} ({len(sidecar['utterances'])} questions, "
          f"answers of {tokens} speech tokens) through a2llm_node + flame_retarget_node")
    try:
        res = gr.run_graph(cfg)
    except gr.GraphStartError as exc:
        print(f"a2llm bench --graph: {exc}", file=sys.stderr)
        return 1
    inproc = inprocess_latency(res, warmup=int(_opt(args, "warmup", 1)))
    report = build_report(res, inproc, gr, args, tokens)
    _write(report, res, out, args)
    return 0 if report["turns"] else 1


def _bench_bag(args, out: Path, answer_s: float):
    """(bag, sidecar): --graph-bag, or the generated question bag."""
    from a2llm_ros.ros.graph_run import load_sidecar, write_question_bag
    given = _opt(args, "graph_bag", None)
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

    from a2llm_ros.bench_core import run_once
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
    """The per-turn figures of one :class:`~a2llm_ros.ros.graph_run.TurnResult`."""
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
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "processor": platform.processor() or platform.machine()},
        "checkpoint": args.checkpoint, "backend": res.backend_kind,
        "speech_tokens": tokens, "answer_s": tokens / SPEECH_TOKEN_RATE,
        "rate": res.config.rate, "bag": str(res.config.bag), "timed_out": res.timed_out,
        "questions": len(res.utterance_ends), "turns": rows, "summary": summarise(rows),
        "resources": res.resource_summary(), "warmup_s": res.warmup_s,
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
                   "collector)"},
    }


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
             f"CPU {use.get('cpu_mean_pct', 0):.0f}% mean / {use.get('cpu_max_pct', 0):.0f}% "
             f"max (100% = one core); RSS {use.get('rss_start_mb', 0):.0f} MB at the start, "
             f"{use.get('rss_peak_mb', 0):.0f} MB peak"]
    if report["dropped"]:
        facts.append("counters: " + ", ".join(f"{k}={v}" for k, v in report["dropped"].items()))
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {f}" for f in facts) + "\n"


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
