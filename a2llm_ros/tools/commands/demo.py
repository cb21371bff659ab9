"""``a2llm demo``: the main job -- replay a recorded conversation through the whole ROS graph.

``make demo`` runs ``a2llm demo --out demo_out``: the ``conversation`` fixture
bag (a question, silence, a second question; spoken by espeak-ng, made on the
first run in ``<out>/fixtures/``) is played into ``a2llm_node`` (parameters of
``config/a2llm.yaml``, checkpoint ``default``) and ``flame_retarget_node`` in
one process (:mod:`a2llm_ros.tools.rosgraph.graph_run`), and ``<out>/`` receives:

* ``answer_turn<N>.wav`` -- each spoken answer, and ``answers.wav``, every
  answer placed on the output timeline (16 kHz mono);
* ``flame.npz`` -- the whole FLAME stream as published (``frames`` [T, 58],
  ``stamps_ns``, ``turn_ids`` with 0 = listening face, ``fps``,
  ``audio_t0_ns`` = the stamp of ``answers.wav``'s first sample);
* ``graph_bag/`` -- an MCAP rosbag2 of every topic of the graph (microphone
  in, speech / FLAME / text / state / face commands / diagnostics out);
* ``preview.png`` -- rendered faces over the answer waveform and the jaw
  opening curve (:func:`a2llm_ros.tools.demo.preview.render_preview`): frames inside
  the answers' speech, open and closed mouths, and one of the listening face;
* ``answers.mp4`` -- the video of the whole replay from the first answer to the
  end of the last (answers and the listening face between them) with the
  answers' sound: H.264 + AAC, 25 fps, frame k showing the FLAME frame stamped
  at audio sample k x 16000 / 25 (:func:`a2llm_ros.tools.render.video.render_video`);
* ``latency.md`` -- per-turn latencies after the end of the user's speech
  (first text, audio, FLAME), real-time factor and audio/FLAME skew;
* ``summary.json`` -- the same figures as JSON.

It needs the ROS environment (``make demo`` or ``. .venv/a2llm_env.sh``) and
the default checkpoint (``make default-checkpoint``); without it the demo stops
with that advice instead of answering with a random model.
"""
HELP = "main job: replay a conversation bag through the ROS graph; answers, FLAME, MCAP, " \
       "preview.png, answers.mp4 and latency.md into --out"

#: Speech tokens per second of answer.
TOKENS_PER_S = 25
#: --polite: pause after a question = the answer cap + this (end-pointing, latency, margin).
POLITE_EXTRA_S = 3.0


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    parser.add_argument("--checkpoint", default="default",
                        help="checkpoint directory, or 'default' (the shipped checkpoint)")
    parser.add_argument("--bag", default=None,
                        help="bag to replay (default: the conversation fixture)")
    parser.add_argument("--sidecar", default=None,
                        help="the bag's fixture JSON with question times (default <bag>.json)")
    parser.add_argument("--rate", type=float, default=1.0, help="replay speed (default 1)")
    parser.add_argument("--polite", action="store_true",
                        help="replay the conversation fixture with the pause after each "
                             "question stretched to --max-answer-s + 3 s, so no answer is "
                             "interrupted by the next question")
    parser.add_argument("--max-answer-s", type=float, default=10.0,
                        help="cap on each answer (generation.max_speech_tokens = 25 x this)")
    parser.add_argument("--config", default="a2llm.yaml",
                        help="node parameter file (a path or a name in config/)")
    parser.add_argument("--backend", default=None,
                        choices=("auto", "torch", "onnxruntime", "tensorrt"),
                        help="a2llm_node backend.kind (default: the parameter file's)")
    parser.add_argument("--no-retarget", dest="retarget", action="store_false",
                        help="do not run flame_retarget_node")
    parser.add_argument("--preview-node", action="store_true",
                        help="also run face_preview_node (RViz markers; ~1.5 ms CPU each)")
    parser.add_argument("--namespace", default="",
                        help="namespace of the nodes (the bag's topics are remapped into it)")
    parser.add_argument("--seed", type=int, default=0, help="fixture and sampling seed")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="give up waiting for the answers after this many seconds")
    parser.add_argument("--no-video", dest="video", action="store_false",
                        help="do not render answers.mp4")


def run(args) -> int:
    import sys
    from pathlib import Path

    ckpt = _checkpoint_or_advice(args.checkpoint)
    if ckpt is None:
        return 2
    try:
        from a2llm_ros.tools.rosgraph import graph_run as gr
    except ImportError as exc:
        print(f"a2llm demo: the ROS 2 environment is not loaded ({exc}); run `make demo` or "
              "source .venv/a2llm_env.sh first", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        bag, sidecar = _input_bag(args, out)
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"a2llm demo: {exc}", file=sys.stderr)
        return 2
    params = {"generation.max_speech_tokens": max(1, int(round(args.max_answer_s
                                                               * TOKENS_PER_S))),
              "generation.seed": args.seed}
    if args.backend:
        params["backend.kind"] = args.backend
    cfg = gr.GraphConfig(bag=str(bag), checkpoint=ckpt, sidecar=sidecar, rate=args.rate,
                         namespace=args.namespace, params_file=args.config, params=params,
                         retarget=args.retarget,
                         preview=args.preview_node, record=str(out / "graph_bag"),
                         timeout_s=args.timeout)
    print(f"a2llm demo: replaying {bag} at {args.rate:g}x through a2llm_node "
          f"(checkpoint {args.checkpoint})" + (" + flame_retarget_node" if args.retarget else ""))
    try:
        res = gr.run_graph(cfg)
    except gr.GraphStartError as exc:
        print(f"a2llm demo: {exc}", file=sys.stderr)
        return 1
    return _write_outputs(res, out, args, gr)


def _checkpoint_or_advice(name: str):
    """The checkpoint path to give the node, or None after printing how to build it."""
    import sys

    from a2llm_ros.checkpoint_files import DEFAULT_CHECKPOINT, resolve_checkpoint
    try:
        path = resolve_checkpoint(name)
    except FileNotFoundError as exc:
        if name == "default":
            print(f"a2llm demo: the default checkpoint is not built ({DEFAULT_CHECKPOINT} has "
                  "no config.json).\n  Build it with `make default-checkpoint` (synthetic "
                  "FLAME-QA data + the tiny training curriculum), or pass --checkpoint DIR.",
                  file=sys.stderr)
        else:
            print(f"a2llm demo: {exc}", file=sys.stderr)
        return None
    return "default" if name == "default" else path


def _input_bag(args, out):
    """(bag dir, sidecar dict or None): --bag, else the conversation fixture (made once)."""
    import json
    from pathlib import Path

    if args.bag:
        bag = Path(args.bag)
        if not (bag / "metadata.yaml").exists():
            raise FileNotFoundError(f"{bag} is not a rosbag2 directory")
        side = Path(args.sidecar) if args.sidecar else bag.with_name(bag.name + ".json")
        return bag, (json.loads(side.read_text()) if side.exists() else None)
    if args.polite:
        return _polite_bag(args, out / "fixtures" / "conversation_polite")
    from a2llm_ros.tools.bags.fixtures import make_fixture
    meta = make_fixture("conversation", out / "fixtures", seed=args.seed, overwrite=False)
    return out / "fixtures" / "conversation", meta


def _polite_bag(args, bag):
    """The conversation fixture's questions (same audio) with longer pauses after each."""
    from a2llm_ros.tools.bags.fixtures import fixture_audio
    from a2llm_ros.tools.rosgraph.graph_run import write_question_bag
    fix = fixture_audio("conversation", args.seed)
    rate = fix.rate
    questions = [(u["text"], fix.audio[int(u["onset_s"] * rate):int(u["offset_s"] * rate), 0])
                 for u in fix.utterances]
    meta = write_question_bag(bag, questions, args.max_answer_s + POLITE_EXTRA_S,
                              lead_s=fix.utterances[0]["onset_s"], seed=args.seed,
                              name="conversation_polite")
    return bag, meta


# ----------------------------------------------------------------------------- outputs

def _write_outputs(res, out, args, gr) -> int:
    import sys

    answered = res.answered
    if not answered:
        states = [(gr.STATE_NAMES[s], k, r) for _, s, k, r in res.states]
        print(f"a2llm demo: no answer was published (timed out: {res.timed_out}); states seen: "
              f"{states}", file=sys.stderr)
        return 1
    files = []
    for turn in answered:
        files.append(_write_wav(out / f"answer_turn{turn.turn_id}.wav", turn.audio))
    wave, t0_ns = _answer_timeline(res)
    files.append(_write_wav(out / "answers.wav", wave))
    files.append(_write_flame(out / "flame.npz", res, t0_ns))
    files.append(_write_preview(out / "preview.png", res, wave, t0_ns))
    if getattr(args, "video", True):
        files.append(_write_video(out / "answers.mp4", res, wave, t0_ns))
    rows = gr.turn_rows(res)
    files.append(_write_latency(out / "latency.md", res, rows, args))
    files.append(_write_summary(out / "summary.json", res, rows, args))
    files.append(out / "graph_bag")
    _print_summary(res, rows, files, out, args)
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        print(f"a2llm demo: not written: {missing}", file=sys.stderr)
        return 1
    return 0


def _write_wav(path, wave):
    from a2llm_ros.audio.io import write_wav
    write_wav(path, wave)
    return path


def _answer_timeline(res):
    """All answers on the presentation timeline: (wave [N] float32, stamp of sample 0 ns)."""
    import numpy as np

    from a2llm_ros.constants import SAMPLE_RATE
    pieces = [(s, a) for t in res.answered for s, a in zip(
        t.audio_stamps, np.split(t.audio, np.cumsum(t.audio_sizes)[:-1]))]
    t0 = min(s for s, _ in pieces)
    end = max(s + len(a) * 1_000_000_000 // SAMPLE_RATE for s, a in pieces)
    wave = np.zeros(int(round((end - t0) * SAMPLE_RATE / 1e9)) + 1, np.float32)
    for stamp, audio in pieces:
        at = int(round((stamp - t0) * SAMPLE_RATE / 1e9))
        wave[at:at + len(audio)] = audio[:len(wave) - at]
    return wave, t0


def _flame_stream(res):
    """(frames [T, D], stamps [T] int64, turn ids [T]) of every frame, in stamp order."""
    import numpy as np
    rows = sorted((f for f in res.frames if f[3] is not None), key=lambda f: f[1])
    return (np.stack([f[3] for f in rows]).astype(np.float32),
            np.array([f[1] for f in rows], np.int64), np.array([f[2] for f in rows], np.uint32))


def _write_flame(path, res, t0_ns):
    import numpy as np

    from a2llm_ros.constants import FLAME_FPS
    frames, stamps, turns = _flame_stream(res)
    np.savez(str(path), frames=frames, stamps_ns=stamps, turn_ids=turns,
             fps=np.float32(FLAME_FPS), audio_t0_ns=np.int64(t0_ns),
             flame_version=np.uint16(res.flame_version))
    return path


def _write_preview(path, res, wave, t0_ns):
    """preview.png over the answers' time span (listening frames in between included)."""
    from a2llm_ros.constants import FLAME_FPS, SAMPLE_RATE
    from a2llm_ros.tools.demo.preview import render_preview
    frames, stamps, turns_of = _flame_stream(res)
    end_ns = t0_ns + int(len(wave) * 1e9 / SAMPLE_RATE)
    keep = (stamps >= t0_ns) & (stamps < end_ns)
    turns = ", ".join(str(t.turn_id) for t in res.answered)
    render_preview(wave, frames[keep], path, n_faces=8, listening=turns_of[keep] == 0,
                   title=f"A\u00b2-LLM demo: answers of turn(s) {turns} as published "
                         f"({len(wave) / SAMPLE_RATE:.2f} s, {int(keep.sum())} FLAME frames at "
                         f"{FLAME_FPS} fps)")
    return path


def _write_video(path, res, wave, t0_ns):
    """answers.mp4: the FLAME stream over answers.wav's span, with that audio."""
    import sys

    from a2llm_ros.constants import FLAME_FPS, SAMPLE_RATE
    from a2llm_ros.tools.render.timeline import Clip
    from a2llm_ros.tools.render.video import render_video
    frames, stamps, _ = _flame_stream(res)
    clip = Clip(wave, SAMPLE_RATE, frames, stamps, int(t0_ns), FLAME_FPS)
    render_video(clip, path, progress=sys.stderr.isatty())
    return path


def _columns():
    from a2llm_ros.tools.demo.report import LATENCY_COLUMNS, Column
    extra = (Column("endpoint_ms", "End-pointing", "{:.0f}", "ms",
                    "question end -> the node's end of utterance (THINKING; VAD silence wait)"),
             Column("answer_s", "Answer", "{:.2f}", "s", "answer audio duration"),
             Column("end", "End", "{}", summary=False,
                    description="how the answer ended: eos, cap (length limit), interrupted "
                                "(barge-in by the next question)"))
    cols = list(LATENCY_COLUMNS)
    return cols[:2] + [extra[0]] + cols[2:] + list(extra[1:])


def _meta(res, args):
    import os
    import platform
    usage = res.resource_summary()
    cpu = f"mean {usage.get('cpu_mean_pct', 0):.0f}%, max {usage.get('cpu_max_pct', 0):.0f}%"
    return {"checkpoint": args.checkpoint, "backend": res.backend_kind,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "bag": os.path.basename(str(res.config.bag)), "replay rate": f"{args.rate:g}x",
            "CPU (whole graph, 100% = one core)": cpu,
            "memory (RSS)": f"peak {usage.get('rss_peak_mb', 0):.0f} MB"}


def _write_latency(path, res, rows, args):
    from a2llm_ros.tools.demo.report import write_latency_md
    write_latency_md(path, rows, _columns(), title="A\u00b2-LLM demo latency", meta=_meta(
        res, args), intro="Measured while replaying the bag through the ROS graph in one "
        "process; a time is when a subscriber in the same process received the message.",
        notes=["Question end = the end of the user's speech in the bag (fixture sidecar); "
               "it includes the end-pointing wait (vad.min_silence_ms).",
               "RTF = the node's generator time / answer audio duration (probe around its "
               "StreamingGenerator); speech is paced, published output.lead_s before it "
               "plays.",
               "A/V skew = FLAME frame stamp minus the stamp of the audio sample it belongs "
               "to (one shared timeline: 0 by construction)."])
    return path


def _write_summary(path, res, rows, args):
    import json
    data = {"checkpoint": args.checkpoint, "backend": res.backend_kind,
            "timed_out": res.timed_out, "turns": rows, "resources": res.resource_summary(),
            "recorded_messages": res.recorded, "face_commands": res.face_commands,
            "diagnostics": res.node_values}
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def _print_summary(res, rows, files, out, args) -> None:
    def ms(v):
        return "-" if v is None else f"{v:.0f} ms"
    print(f"\na2llm demo: {len(res.answered)} answer(s) via backend {res.backend_kind}"
          + (" (timed out waiting for more)" if res.timed_out else ""))
    for row, turn in zip(rows, res.turns):
        text = turn.text.strip().replace("\n", " ")
        print(f"  turn {row['turn']}: {turn.question_text or '?'!r} -> "
              f"{row['answer_s']:.2f} s of speech ({row['end']}), first audio "
              f"{ms(row['first_audio_ms'])}, first FLAME {ms(row['first_flame_ms'])} after "
              f"the question; text {text[:60]!r}")
    if any(t.interrupted for t in res.turns) and not args.polite:
        print("  (an answer was interrupted: the next question in the recording came before it "
              "ended -- barge-in; --polite replays with longer pauses)")
    usage = res.resource_summary()
    print(f"  CPU mean {usage.get('cpu_mean_pct', 0):.0f}% (100% = one core), peak RSS "
          f"{usage.get('rss_peak_mb', 0):.0f} MB; {sum(res.recorded.values())} messages in "
          f"{out / 'graph_bag'}")
    print(f"  files in {out}/: " + ", ".join(sorted(p.name for p in files)))
