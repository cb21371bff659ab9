"""``a2llm demo``: the main job, end to end on this machine.

Until the shipped default checkpoint and the bag-replay graph land (issues 4
and 7), the demo runs the model core on a spoken question: espeak-ng speaks a
question, a randomly initialised ``tiny`` checkpoint answers it with speech
and FLAME motion (the untrained model babbles; the plumbing, rates and time
base are real), and the results go to ``--out``.
"""
HELP = "run the main job: speak a question, answer with speech + FLAME into --out"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="output directory")
    parser.add_argument("--question", default="What is your name?")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint dir (default: a fresh random tiny checkpoint)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    import json
    from pathlib import Path

    from a2llm_ros.audio.io import write_wav
    from a2llm_ros.commands import generate, init
    from a2llm_ros.data.espeak import synthesize

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    question = synthesize(args.question)
    q_path = out / "question.wav"
    write_wav(q_path, question.audio, question.sample_rate)
    ckpt = args.checkpoint
    if ckpt is None:
        ckpt = str(out / "tiny_random_checkpoint")
        init.run(_ns(preset="tiny", out=ckpt, seed=args.seed, hf_path=None, fp16=False))
    parser = __import__("argparse").ArgumentParser()
    generate.add_arguments(parser)
    gen_args = parser.parse_args(["--checkpoint", ckpt, "--input", str(q_path),
                                  "--out", str(out), "--seed", str(args.seed),
                                  "--max-speech-tokens", "125"])
    rc = generate.run(gen_args)
    if rc:
        return rc
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    print(f"demo: question {args.question!r} ({question.seconds:.2f} s) -> "
          f"{len(events)} events; files in {out}/: "
          + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0


def _ns(**kwargs):
    import argparse
    return argparse.Namespace(**kwargs)
