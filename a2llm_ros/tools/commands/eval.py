"""``a2llm eval``: paper metrics, latency and intelligibility of a checkpoint on a split."""
from __future__ import annotations

import argparse
import os

HELP = "evaluate a checkpoint on a FLAME-QA split (face metrics, latency, ASR judge)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="default",
                        help="checkpoint directory, or 'default' for the shipped one")
    parser.add_argument("--data", default=None,
                        help="FLAME-QA directory (default: build the synthetic set into "
                             "~/.cache/a2llm_ros/flameqa_synth once)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=0, help="score at most N samples")
    parser.add_argument("--json", default=None, help="write the full report as JSON")
    parser.add_argument("--markdown", default=None, help="write the tables as markdown")
    parser.add_argument("--flame-model", default="generated",
                        help="licensed FLAME model (.pkl, converted .npz or directory); "
                             "default: the project's generated FLAME-format head")
    parser.add_argument("--mesh-backend", default="numpy", choices=("numpy", "smplx"))
    parser.add_argument("--sample", action="store_true",
                        help="sample (temperature 0.8, top-k 50) instead of greedy decoding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-speech-tokens", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-asr", action="store_true", help="skip the PocketSphinx judge")


def default_data_dir() -> str:
    """The synthetic FLAME-QA set the default checkpoint was trained on (built on demand)."""
    from a2llm_ros.tools.data.flameqa import INFO_FILE
    from a2llm_ros.tools.data.synth import DEFAULT_SYNTH, build_synthetic
    root = os.path.join(os.path.expanduser("~"), ".cache", "a2llm_ros", "flameqa_synth")
    if not os.path.isfile(os.path.join(root, INFO_FILE)):
        print(f"building the synthetic FLAME-QA set in {root} ...")
        build_synthetic(root, **DEFAULT_SYNTH)
    return root


def run(args) -> int:
    from a2llm_ros.tools.evaluation import evaluate, markdown_report, write_report
    from a2llm_ros.generation import GenerationConfig
    data = args.data or default_data_dir()
    gen_cfg = GenerationConfig(greedy=not args.sample, seed=args.seed,
                               max_speech_tokens=args.max_speech_tokens)
    try:
        report = evaluate(args.checkpoint, data, split=args.split, limit=args.limit,
                          flame_model=args.flame_model, mesh_backend=args.mesh_backend,
                          gen_cfg=gen_cfg, threads=args.threads, asr=not args.no_asr)
    except (FileNotFoundError, ValueError) as exc:
        print(f"a2llm eval: {exc}")
        return 2
    print(markdown_report(report))
    write_report(report, args.json, args.markdown)
    return 0
