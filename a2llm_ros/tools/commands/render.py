"""``a2llm render``: a video of the talking face with its voice (H.264 + AAC MP4).

* ``a2llm render --flame FLAME.npz --audio ANSWER.wav --out VIDEO.mp4``: the
  FLAME frames of ``a2llm generate`` / ``a2llm demo`` / ``a2llm bag export``
  with their WAV;
* ``a2llm render --bag BAG --out VIDEO.mp4``: straight from a recorded bag
  (``a2llm demo``'s ``graph_bag``, ``a2llm bag record``): the FLAME topic and
  the speech topic, placed by their stamps.

Video frame k (25 fps) shows the mesh at the stamp of audio sample
k x sample_rate / 25 (:mod:`a2llm_ros.tools.render.timeline`); the face is drawn by
the project's software renderer (:mod:`a2llm_ros.tools.render.raster`, CPU only) and
encoded by the ffmpeg of the ``imageio-ffmpeg`` wheel.
"""
from __future__ import annotations

import sys

HELP = "render FLAME frames + speech to an MP4 (H.264/AAC, 25 fps): --flame NPZ --audio " \
       "WAV, or --bag BAG"


EPILOG = ("Video frame k shows the FLAME frame stamped nearest to audio sample "
          "k x sample_rate / 25; N audio samples give ceil(25 N / sample_rate) frames. "
          "ffmpeg: the binary of the imageio-ffmpeg wheel (installed by `make env`), else "
          "ffmpeg on PATH. Cost: about 0.1 s of CPU per 448 x 448 frame.")


def add_arguments(parser) -> None:
    from a2llm_ros.tools.render.video import DEFAULT_CRF, DEFAULT_SIZE

    parser.epilog = EPILOG
    src = parser.add_argument_group("input: --flame with --audio, or --bag")
    src.add_argument("--flame", default=None,
                     help="FLAME frames .npz (frames [T, D]; stamps_ns and audio_t0_ns used "
                          "when present, as in a2llm demo's flame.npz)")
    src.add_argument("--audio", default=None, help="the speech WAV that goes with --flame")
    src.add_argument("--bag", default=None, help="a recorded rosbag2 directory instead")
    src.add_argument("--flame-topic", default=None,
                     help="--bag: FlameChunk/FlameFrame topic (default: the bag's FlameChunk "
                          "topic)")
    src.add_argument("--audio-topic", default=None,
                     help="--bag: stamped speech topic (default: the AudioDataStamped topic "
                          "with 'speech' in its name)")
    parser.add_argument("--out", required=True, help="output video (.mp4)")
    parser.add_argument("--model", default="generated",
                        help="head: 'generated' (default), a .npz from `a2llm flame convert` "
                             "or a FLAME model directory")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"video width = height in pixels, a multiple of 16 (default "
                             f"{DEFAULT_SIZE})")
    parser.add_argument("--supersample", type=int, default=1,
                        help="anti-aliasing samples per pixel along each axis (default 1)")
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF,
                        help=f"H.264 quality, lower is better (default {DEFAULT_CRF})")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")


def _clip(args):
    from a2llm_ros.tools.render import timeline
    if args.bag:
        if args.flame or args.audio:
            raise ValueError("give --bag, or --flame with --audio, not both")
        return timeline.load_bag(args.bag, args.flame_topic, args.audio_topic)
    if not (args.flame and args.audio):
        raise ValueError("give --flame NPZ and --audio WAV (or --bag BAG)")
    return timeline.load_pair(args.flame, args.audio)


def run(args) -> int:
    from a2llm_ros.flame.mesh import FlameMesh
    from a2llm_ros.tools.render.video import FfmpegError, render_video

    if args.size < 16 or args.size % 16:
        print(f"a2llm render: --size must be a positive multiple of 16, got {args.size}",
              file=sys.stderr)
        return 2
    try:
        clip = _clip(args)
        mesh = FlameMesh(args.model, layout=clip.layout)
        report = render_video(clip, args.out, mesh=mesh, size=args.size,
                              supersample=args.supersample, progress=args.progress,
                              crf=args.crf)
    except (FileNotFoundError, ValueError, FfmpegError) as exc:
        print(f"a2llm render: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {report.path}: {report.n_frames} frames at {report.fps:g} fps "
          f"({report.video_s:.2f} s), {report.size[0]}x{report.size[1]} H.264 + AAC audio "
          f"({report.audio_s:.2f} s)")
    return 0
