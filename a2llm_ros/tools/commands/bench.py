"""``a2llm bench``: inference backends side by side (or, with ``--graph``, the ROS graph)."""
from __future__ import annotations

import argparse
import json
import os
import sys

HELP = "benchmark inference backends (torch, onnxruntime, tensorrt) side by side"

KNOWN_BACKENDS = ("torch", "onnxruntime", "tensorrt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from a2llm_ros.tools.commands.export import add_backend_arguments
    parser.add_argument("--checkpoint", default="default",
                        help="checkpoint directory, or 'default' for the shipped one")
    parser.add_argument("--backends", default="torch,onnxruntime",
                        help="comma-separated: torch, onnxruntime, tensorrt")
    parser.add_argument("--json", default=None, help="write all results to this JSON file")
    parser.add_argument("--onnx", default=None,
                        help="directory of the exported ONNX graphs (default <checkpoint>/onnx;"
                             " exported there when missing)")
    parser.add_argument("--engines", default=None,
                        help="directory of the TensorRT engines (default <checkpoint>/tensorrt)")
    parser.add_argument("--question-seconds", type=float, default=2.0)
    parser.add_argument("--speech-tokens", type=int, default=75,
                        help="answer length in 40 ms speech tokens (75 = 3 s)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch and ORT)")
    parser.add_argument("--bandwidth-gbs", type=float, default=None,
                        help="device memory bandwidth for the decode bandwidth fraction "
                             "(default: known GPUs' data-sheet value; CPU: not computed)")
    parser.add_argument("--no-isolate", action="store_true",
                        help="run every backend in this process (peak memory is then shared)")
    parser.add_argument("--codec", default=None, metavar="tiny|full|DIR",
                        help="benchmark Step-Audio-2's speech codec instead: a random folder "
                             "at tiny or full (published) size, or a token2wav/ folder")
    parser.add_argument("--graph", action="store_true",
                        help="benchmark the ROS graph instead (a2llm_ros.tools.bench.graph; "
                             "--processes: a process per node, --graph-compare: layouts "
                             "side by side)")
    add_backend_arguments(parser)
    from a2llm_ros.tools.bench.graph import add_graph_arguments
    add_graph_arguments(parser)


def run(args) -> int:
    """``--graph``: the ROS-graph benchmark; otherwise :func:`run_backends`."""
    if getattr(args, "graph", False):
        from a2llm_ros.tools.bench.graph import run_graph
        return int(run_graph(args) or 0)
    if getattr(args, "codec", None):
        return run_codec(args)
    return run_backends(args)


def run_codec(args) -> int:
    """``--codec``: first-chunk latency and RTF of the Step-Audio-2 codec."""
    from a2llm_ros.tools.bench.codec import bench_codec, format_codec
    from a2llm_ros.model.step_token2wav import CodecError
    try:
        res = bench_codec(args.codec, getattr(args, "device", None) or "cpu",
                          args.speech_tokens, args.runs, args.warmup, args.threads)
    except (CodecError, ValueError) as exc:
        print(f"a2llm bench: {exc}", file=sys.stderr)
        return 1
    print(format_codec(res))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def run_backends(args) -> int:
    """Export what is missing, benchmark the backends, print the table, write JSON."""
    from a2llm_ros.checkpoint_files import resolve_checkpoint
    from a2llm_ros.tools.commands.export import backend_config
    from a2llm_ros.engines import EngineError
    from a2llm_ros.tools.bench.engines import benchmark_backends, format_table
    kinds = [k.strip() for k in args.backends.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KNOWN_BACKENDS]
    if unknown or not kinds:
        print(f"a2llm bench: unknown backends {unknown}; known: {', '.join(KNOWN_BACKENDS)}",
              file=sys.stderr)
        return 2
    try:
        ckpt = resolve_checkpoint(args.checkpoint)
        onnx_dir = args.onnx or os.path.join(ckpt, "onnx")
        cfg = backend_config(args, ckpt, model_file_path=onnx_dir,
                             engine_file_path=args.engines or "")
        cfg = cfg.from_dict({**cfg.to_dict(), "threads": max(1, args.threads)})
        if any(k in ("onnxruntime", "tensorrt") for k in kinds):
            _ensure_graphs(ckpt, onnx_dir, cfg, kinds)
    except (EngineError, FileNotFoundError, ValueError) as exc:
        print(f"a2llm bench: {exc}", file=sys.stderr)
        return 1
    res = benchmark_backends(ckpt, kinds, cfg, args.question_seconds, args.speech_tokens,
                             args.runs, args.warmup, args.threads, not args.no_isolate,
                             args.bandwidth_gbs)
    print(f"A2LLM backend benchmark: {ckpt}, question {args.question_seconds:.1f} s, answer "
          f"{args.speech_tokens} speech tokens ({res['answer_s']:.1f} s), {args.runs} runs, "
          f"{args.threads} thread(s), {res['machine']['date']}")
    print(format_table(res["backends"]))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")
    failed = [k for k, v in res["backends"].items() if "error" in v]
    return 1 if failed and len(failed) == len(kinds) else 0


def _ensure_graphs(ckpt: str, onnx_dir: str, cfg, kinds) -> None:
    """Export (with parity checks) the graphs the engine backends need, when missing."""
    from a2llm_ros.engines.graph_backend import missing_graphs
    from a2llm_ros.tools.export.exporter import export_checkpoint
    from a2llm_ros.engines.manifest import MANIFEST, read_json
    path = os.path.join(onnx_dir, MANIFEST)
    manifest = read_json(path) if os.path.isfile(path) else None
    todo = set()
    if "onnxruntime" in kinds:
        todo |= set(missing_graphs(manifest, cfg.kv_mode("onnxruntime")))
    if "tensorrt" in kinds:
        todo |= set(missing_graphs(manifest, cfg.kv_mode("tensorrt")))
    if todo:
        from a2llm_ros.engines.manifest import GRAPHS
        graphs = [g for g in GRAPHS if g in todo]
        print(f"exporting ONNX graphs {', '.join(graphs)} to {onnx_dir}")
        export_checkpoint(ckpt, onnx_dir, cfg, graphs, verify=True)
