"""``a2llm init``: write a randomly initialised checkpoint for a preset."""
from __future__ import annotations

import argparse
import os
import sys

HELP = "write a randomly initialised model checkpoint (tiny / edge / paper preset)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", choices=("tiny", "edge", "paper"),
                        help="model size preset (default: tiny)")
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    parser.add_argument("--hf-path", default=None,
                        help="edge/paper: local Hugging Face directory of the Qwen2 backbone "
                             "(config.json + safetensors + tokenizer files); stored relative "
                             "to --out when inside it, else absolute")
    parser.add_argument("--fp16", action="store_true",
                        help="store floating weights as float16 (halves the file)")


def _hf_path(args) -> str:
    path = os.path.abspath(args.hf_path)
    out = os.path.abspath(args.out)
    if os.path.commonpath([path, out]) == out:
        return os.path.relpath(path, out)
    return path


def run(args) -> int:
    import torch

    from a2llm_ros.checkpoint import init_model, save_checkpoint
    from a2llm_ros.config import A2LLMConfig
    overrides = {}
    if args.preset != "tiny":
        if not args.hf_path:
            print(f"a2llm init: --preset {args.preset} needs --hf-path DIR (a local Hugging "
                  f"Face Qwen2 directory)", file=sys.stderr)
            return 2
        overrides["llm"] = {"hf_path": _hf_path(args)}
    try:
        cfg = A2LLMConfig.preset(args.preset, **overrides)
        os.makedirs(args.out, exist_ok=True)
        model = init_model(cfg, seed=args.seed, base_dir=os.path.abspath(args.out))
        save_checkpoint(model, args.out, dtype=torch.float16 if args.fp16 else None)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"a2llm init: {exc}", file=sys.stderr)
        return 1
    size = os.path.getsize(os.path.join(args.out, "model.safetensors")) / 1e6
    print(f"wrote {args.preset} checkpoint to {args.out}: {model.n_params() / 1e6:.2f} M "
          f"parameters, model.safetensors {size:.1f} MB")
    return 0
