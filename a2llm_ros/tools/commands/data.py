"""``a2llm data``: build, import and check FLAME-QA datasets.

* ``a2llm data synth --out DIR --seed N [--n-pairs 50] [--n-voices 5] [--workers 2]``
* ``a2llm data import --audio-dir A --transcripts T --flame-dir F --out DIR [--fps 30]``
* ``a2llm data check DIR`` (validates every sample, prints a summary; exit 1 on rejects)
* ``a2llm data speech-tokens DIR --token2wav T2W [--batch 8]`` (answer audio -> Step's
  25 Hz S3 tokens with the folder's ONNX tokenizer; ``DIR/speech_tokens_s3.npz``)
"""
from __future__ import annotations

import json

HELP = "Build (espeak-ng synthetic), import (real assets) or check FLAME-QA datasets"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="data_cmd", metavar="ACTION", required=True)
    p = sub.add_parser("synth", help="build the synthetic espeak-ng FLAME-QA set")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-pairs", type=int, default=50, help="question/answer pairs (max 50)")
    p.add_argument("--n-voices", type=int, default=5,
                   help="question voices for train/val (1..16); test uses the held-out voice")
    p.add_argument("--workers", type=int, default=2, help="synthesis processes")
    p = sub.add_parser("import", help="convert real audio + FLAME tracks to FLAME-QA")
    p.add_argument("--audio-dir", required=True)
    p.add_argument("--transcripts", required=True, help="CSV/TSV/JSON transcript table")
    p.add_argument("--flame-dir", required=True, help="tracker outputs (npz/npy/per-frame)")
    p.add_argument("--out", required=True)
    p.add_argument("--fps", type=float, default=30.0, help="track fps when files lack it")
    p.add_argument("--max-mismatch-frames", type=int, default=2)
    p = sub.add_parser("check", help="validate a FLAME-QA directory and print a summary")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p = sub.add_parser("speech-tokens", help="answer audio -> Step-Audio-2 S3 speech tokens")
    p.add_argument("dir")
    p.add_argument("--token2wav", required=True,
                   help="Step-Audio-2-mini token2wav/ folder (or the model folder holding it)")
    p.add_argument("--batch", type=int, default=8, help="answers per ONNX call")
    p.add_argument("--split", action="append", default=None, help="only these splits")
    p.add_argument("--out", default=None, help="output .npz (default DIR/speech_tokens_s3.npz)")


def run(args) -> int:
    return {"synth": _synth, "import": _import, "check": _check,
            "speech-tokens": _speech_tokens}[args.data_cmd](args)


def _speech_tokens(args) -> int:
    import os

    import torch

    from a2llm_ros.tools.data.speech_tokens import tokenize_answers
    from a2llm_ros.model.configs import SpeechCodecConfig
    from a2llm_ros.model.step_token2wav import CodecError, S3SpeechTokenizer, check_folder

    folder = args.token2wav
    if os.path.isdir(os.path.join(folder, "token2wav")):
        folder = os.path.join(folder, "token2wav")
    try:
        check_folder(folder)
        tok = S3SpeechTokenizer(SpeechCodecConfig.step(folder, device="cpu"), folder,
                                torch.device("cpu"))
        path = tokenize_answers(args.dir, tok, batch=args.batch, splits=args.split,
                                out=args.out)
    except (CodecError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}")
        return 2
    print(f"wrote {path}")
    return 0


def _synth(args) -> int:
    from a2llm_ros.tools.data.synth import build_synthetic

    info = build_synthetic(args.out, seed=args.seed, n_pairs=args.n_pairs,
                           n_question_voices=args.n_voices, workers=args.workers)
    build = info["build"]
    print(f"wrote {build['n_samples']} samples to {args.out} "
          f"({build['bytes'] / 1e6:.1f} MB, {build['seconds']:.1f} s)")
    for split, entry in info["splits"].items():
        print(f"  {split}: {entry['n_samples']} samples, {len(entry['shards'])} shard(s)")
    print(f"  held-out question voice (test only): {', '.join(info['voices']['held_out'])}")
    return 0


def _import(args) -> int:
    from a2llm_ros.tools.data.importer import import_assets

    report = import_assets(args.audio_dir, args.transcripts, args.flame_dir, args.out,
                           fps=args.fps, max_mismatch_frames=args.max_mismatch_frames)
    print(f"imported {report.n_imported} samples to {args.out}")
    for block, n in sorted(report.missing_blocks.items()):
        print(f"  {block}: missing in {n} track(s), filled with zeros")
    for change, n in sorted(report.expression_resized.items()):
        print(f"  expression resized {change} in {n} track(s)")
    for sample_id, reason in report.skipped:
        print(f"  skipped {sample_id}: {reason}")
    return 0 if report.n_imported else 1


def _check(args) -> int:
    from a2llm_ros.tools.data.flameqa import summarize

    summary = summarize(args.dir)
    if args.json:
        summary = dict(summary)
        summary.pop("info")
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 1 if summary["rejected"] else 0


def _print_summary(summary: dict) -> None:
    info = summary["info"]
    print(f"{summary['root']}: FLAME-QA v{info['version']}, {info['fps']} fps, "
          f"{info['sample_rate']} Hz, FLAME dim {info['flame_layout']['dim']}")
    for split, s in summary["splits"].items():
        emotions = ", ".join(f"{k} {v}" for k, v in sorted(s["emotions"].items()))
        print(f"  {split}: {s['n']} samples, answers {s['answer_s']:.1f} s, "
              f"questions {s['question_s']:.1f} s; {emotions}; "
              f"question voices: {', '.join(s['question_voices'])}")
    print(f"  valid: {summary['n_ok']}, rejected: {len(summary['rejected'])}")
    for sample_id, reason in summary["rejected"]:
        print(f"    {sample_id}: {reason}")
