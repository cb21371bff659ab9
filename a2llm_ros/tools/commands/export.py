"""``a2llm export``: ONNX graphs (checked with ONNX Runtime) or TensorRT engines."""
from __future__ import annotations

import argparse
import os
import sys

HELP = "export a checkpoint's components as ONNX graphs or TensorRT engines"


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``export`` and ``bench`` (they fill a BackendConfig)."""
    parser.add_argument("--precision", default=None, choices=("fp32", "fp16", "int8", "fp8"),
                        help="TensorRT precision (default fp16)")
    parser.add_argument("--workspace-mb", type=int, default=None,
                        help="TensorRT builder workspace limit (MiB)")
    parser.add_argument("--max-context", type=int, default=None,
                        help="LLM positions (prompt + answer) the graphs/engines support")
    parser.add_argument("--max-question-s", type=float, default=None,
                        help="longest question (seconds) the engines support")
    parser.add_argument("--kv-cache", default=None, choices=("auto", "dynamic", "static"),
                        help="KV-cache graphs: dynamic (prefill+decode) or static (llm)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--force-engine-update", action="store_true",
                        help="rebuild TensorRT engines even when cached ones exist")
    parser.add_argument("--no-cuda-graph", action="store_true",
                        help="TensorRT runtime without CUDA-graph capture")
    parser.add_argument("--weights", default=None, choices=("none", "int8", "int4"),
                        help="torch backend: weight-only LLM quantization (docs/edge.md)")


def backend_config(args, checkpoint_dir: str, **paths):
    """BackendConfig from the checkpoint's preset and the command-line overrides."""
    from a2llm_ros.checkpoint_files import read_config
    from a2llm_ros.engines import BackendConfig
    from a2llm_ros.model.step_audio import is_step_folder
    # a bare Step-Audio-2-mini folder loads as the paper preset (step_audio.step_config)
    preset = "paper" if is_step_folder(checkpoint_dir) else read_config(checkpoint_dir).preset_name
    values = BackendConfig.preset(preset if preset in BackendConfig.PRESETS else "tiny").to_dict()
    overrides = {"precision": args.precision, "workspace_mb": args.workspace_mb,
                 "max_context": args.max_context, "max_question_s": args.max_question_s,
                 "kv_cache": args.kv_cache, "device": args.device,
                 "weights": getattr(args, "weights", None)}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.update({k: v for k, v in paths.items() if v})
    values["force_engine_update"] = bool(args.force_engine_update)
    values["cuda_graph"] = not args.no_cuda_graph
    if values["opt_context"] > values["max_context"]:
        values["opt_context"] = values["max_context"]
    if values["opt_question_s"] > values["max_question_s"]:
        values["opt_question_s"] = values["max_question_s"]
    return BackendConfig.from_dict(values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="default",
                        help="checkpoint directory, or 'default' for the shipped one")
    parser.add_argument("--format", default="onnx", choices=("onnx", "tensorrt"))
    parser.add_argument("--out", default=None,
                        help="output directory (default: <checkpoint>/onnx or "
                             "<checkpoint>/tensorrt)")
    parser.add_argument("--onnx", default=None,
                        help="with --format tensorrt: directory of the ONNX graphs (exported "
                             "there first when missing; default <checkpoint>/onnx)")
    parser.add_argument("--graphs", default=None,
                        help="comma-separated graph names (default: all for onnx, the ones "
                             "the TensorRT backend runs for tensorrt)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the ONNX Runtime vs PyTorch parity checks")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_backend_arguments(parser)


def run(args) -> int:
    import torch

    from a2llm_ros.checkpoint_files import resolve_checkpoint
    from a2llm_ros.engines import EngineError
    torch.set_num_threads(max(1, args.threads))
    try:
        ckpt = resolve_checkpoint(args.checkpoint)
        if args.format == "onnx":
            return _export_onnx(args, ckpt)
        return _export_tensorrt(args, ckpt)
    except (EngineError, FileNotFoundError, ValueError) as exc:
        print(f"a2llm export: {exc}", file=sys.stderr)
        return 1


def _graphs(args, default):
    return [g.strip() for g in args.graphs.split(",") if g.strip()] if args.graphs else default


def _export_onnx(args, ckpt: str) -> int:
    from a2llm_ros.engines.manifest import GRAPHS
    from a2llm_ros.tools.export.exporter import export_checkpoint
    out = args.out or os.path.join(ckpt, "onnx")
    cfg = backend_config(args, ckpt, model_file_path=out)
    print(f"exporting {ckpt} -> {out} (ONNX opset 17, TensorRT-parser ops only)")
    export_checkpoint(ckpt, out, cfg, _graphs(args, list(GRAPHS)), verify=not args.no_verify)
    print(f"wrote {out}/manifest.json and one .onnx + .json sidecar per graph")
    return 0


def _export_tensorrt(args, ckpt: str) -> int:
    from a2llm_ros.engines.graph_backend import missing_graphs, needed_graphs
    from a2llm_ros.tools.export.exporter import export_checkpoint
    from a2llm_ros.engines.manifest import MANIFEST, read_json
    from a2llm_ros.engines.tensorrt_build import build_engines, import_tensorrt
    onnx_dir = args.onnx or os.path.join(ckpt, "onnx")
    engine_dir = args.out or os.path.join(ckpt, "tensorrt")
    cfg = backend_config(args, ckpt, model_file_path=onnx_dir, engine_file_path=engine_dir)
    graphs = _graphs(args, list(needed_graphs(cfg.kv_mode("tensorrt"))))
    manifest_path = os.path.join(onnx_dir, MANIFEST)
    manifest = read_json(manifest_path) if os.path.isfile(manifest_path) else None
    todo = [g for g in graphs if g in missing_graphs(manifest, "dynamic")
            + missing_graphs(manifest, "static")]
    if todo:
        print(f"exporting the ONNX graphs {', '.join(todo)} to {onnx_dir} first")
        export_checkpoint(ckpt, onnx_dir, cfg, todo, verify=not args.no_verify)
    trt = import_tensorrt()
    print(f"TensorRT {trt.__version__}: building {', '.join(graphs)} into {engine_dir}")
    plans = build_engines(ckpt, cfg, graphs, force=args.force_engine_update)
    from a2llm_ros.engines.manifest import write_json
    from a2llm_ros.engines.manifest import load_manifest
    write_json(os.path.join(engine_dir, MANIFEST), load_manifest(onnx_dir, ckpt, ()))
    for graph, plan in plans.items():
        print(f"  {graph:15s} {plan}")
    return 0
