"""``a2llm generate``: answer a question WAV with speech, text and FLAME motion."""
from __future__ import annotations

import argparse
import json
import os
import sys

HELP = "answer a question .wav: writes answer.wav, flame.npz and events.jsonl"

#: Exit code for unusable input audio (missing, empty, NaN, too short).
EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="default",
                        help="checkpoint directory, or 'default' for the shipped one")
    parser.add_argument("--input", required=True, help="question audio (.wav, any rate)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--max-speech-tokens", type=int, default=750,
                        help="cap on the answer length in 40 ms speech tokens (default 750)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the tiny model's small ops run "
                             "fastest single-threaded, and far slower on a busy machine "
                             "with more)")
    parser.add_argument("--min-speech-tokens", type=int, default=0,
                        help="suppress <speech_end> before this many speech tokens")
    parser.add_argument("--backend", default="torch",
                        choices=("auto", "torch", "onnxruntime", "tensorrt"),
                        help="inference backend (default torch; see `a2llm doctor`)")
    parser.add_argument("--onnx", default=None,
                        help="exported ONNX graphs (`a2llm export --format onnx`)")
    parser.add_argument("--engines", default=None,
                        help="TensorRT engine directory (`a2llm export --format tensorrt`)")
    from a2llm_ros.tools.commands.export import add_backend_arguments
    add_backend_arguments(parser)


def write_outputs(out_dir: str, result, layout) -> dict:
    """answer.wav, flame.npz and events.jsonl for a TurnResult; returns a summary."""
    import numpy as np

    from a2llm_ros.audio.io import write_wav
    from a2llm_ros.constants import FLAME_FPS
    from a2llm_ros.generation import event_to_json
    os.makedirs(out_dir, exist_ok=True)
    audio = result.audio if result.audio.size else np.zeros(1, np.float32)
    write_wav(os.path.join(out_dir, "answer.wav"), audio, result.sample_rate)
    np.savez(os.path.join(out_dir, "flame.npz"), frames=result.frames.astype(np.float32),
             fps=np.int64(FLAME_FPS), layout=np.array(json.dumps(layout.to_dict())),
             flame_version=np.int64(layout.version))
    with open(os.path.join(out_dir, "events.jsonl"), "w") as f:
        for event in result.events:
            f.write(json.dumps(event_to_json(event)) + "\n")
    return {"text": result.text, "seconds": result.audio.size / result.sample_rate,
            "frames": int(result.frames.shape[0]), "end": result.end_reason}


def read_question(path: str, verb: str):
    """The question WAV, validated; None after printing why (exit with EXIT_BAD_INPUT)."""
    from a2llm_ros.audio.io import read_wav
    from a2llm_ros.generation import check_question
    try:
        return check_question(read_wav(path))
    except (FileNotFoundError, ValueError) as exc:
        print(f"a2llm {verb}: bad input audio: {exc}", file=sys.stderr)
        return None


def run(args) -> int:
    import torch

    from a2llm_ros.generation import GenerationConfig, StreamingGenerator
    wave = read_question(args.input, "generate")
    if wave is None:
        return EXIT_BAD_INPUT
    from a2llm_ros.checkpoint_files import resolve_checkpoint
    from a2llm_ros.tools.commands.export import backend_config
    from a2llm_ros.engines import EngineError, load_backend
    torch.set_num_threads(max(1, args.threads))
    try:
        ckpt = resolve_checkpoint(args.checkpoint)
        bcfg = backend_config(args, ckpt, kind=args.backend, model_file_path=args.onnx,
                              engine_file_path=args.engines)
        backend = load_backend(ckpt, bcfg)
        cfg = GenerationConfig(max_speech_tokens=args.max_speech_tokens,
                               min_speech_tokens=args.min_speech_tokens,
                               temperature=args.temperature, top_k=args.top_k,
                               seed=args.seed, greedy=args.greedy)
    except (FileNotFoundError, ValueError, EngineError) as exc:
        print(f"a2llm generate: {exc}", file=sys.stderr)
        return 1
    result = StreamingGenerator(backend, cfg).generate(wave)
    summary = write_outputs(args.out, result, backend.model.layout)
    print(f"answer ({summary['end']}, {summary['seconds']:.2f} s, {summary['frames']} FLAME "
          f"frames): {summary['text']!r}")
    print(f"wrote {args.out}/answer.wav, flame.npz, events.jsonl")
    return 0
