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
    parser.add_argument("--backbone", default=None,
                        help="edge/paper: Step-Audio-2-mini folder (config.json + safetensors "
                             "shards + tokenizer files); the encoder, adaptor and LLM sizes and "
                             "weights come from it and are not copied. Stored relative to "
                             "--out when inside it, else absolute, with its fingerprint")
    parser.add_argument("--fp16", action="store_true",
                        help="store floating weights as float16 (halves the file)")


def _backbone_path(args) -> str:
    path = os.path.abspath(args.backbone)
    out = os.path.abspath(args.out)
    if os.path.commonpath([path, out]) == out:
        return os.path.relpath(path, out)
    return path


def run(args) -> int:
    import torch

    from a2llm_ros.checkpoint import init_model, save_checkpoint
    from a2llm_ros.config import A2LLMConfig
    cfg = None
    if args.preset != "tiny":
        if not args.backbone:
            print(f"a2llm init: --preset {args.preset} needs --backbone DIR (a local "
                  f"Step-Audio-2-mini folder)", file=sys.stderr)
            return 2
        from a2llm_ros.model.step_audio import step_config
        try:  # the folder's sizes, and its codec when token2wav/ is complete
            cfg = step_config(args.backbone, args.preset).with_paths(
                backbone=_backbone_path(args))
        except (OSError, ValueError) as exc:
            print(f"a2llm init: {exc}", file=sys.stderr)
            return 1
    elif args.backbone:
        print("a2llm init: --backbone is for the edge/paper presets (tiny keeps its "
              "weights in the checkpoint)", file=sys.stderr)
        return 2
    try:
        cfg = cfg or A2LLMConfig.preset(args.preset)
        os.makedirs(args.out, exist_ok=True)
        model = init_model(cfg, seed=args.seed, base_dir=os.path.abspath(args.out))
        save_checkpoint(model, args.out, dtype=torch.float16 if args.fp16 else None)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"a2llm init: {exc}", file=sys.stderr)
        return 1
    size = os.path.getsize(os.path.join(args.out, "model.safetensors")) / 1e6
    where = f" on backbone {cfg.llm.backbone}" if cfg.llm.backbone else ""
    print(f"wrote {args.preset} checkpoint{where} to {args.out}: {model.n_params() / 1e6:.2f} M "
          f"parameters, model.safetensors {size:.1f} MB")
    return 0
