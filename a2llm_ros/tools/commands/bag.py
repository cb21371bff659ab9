"""``a2llm bag``: rosbag2 fixtures, export and inspection (no rclpy needed).

* ``a2llm bag fixtures --out DIR [--seed N] [--names a,b] [--malformed]``
* ``a2llm bag export BAG --audio-topic T --out x.wav [--info-topic I] [--rate R]``
* ``a2llm bag export BAG --flame-topic T --out x.npz``
* ``a2llm bag info BAG [--json]``
* ``a2llm bag record TOPIC... | --all [-o BAG] [--storage mcap|sqlite3] [--duration S]``
* ``a2llm bag play BAG [--rate R] [--loop] [--clock [HZ]] [--topics T...] ...``

``record`` and ``play`` talk to a live ROS graph: their code is in
:mod:`a2llm_ros.tools.rosgraph.bag_record` /
:mod:`a2llm_ros.tools.rosgraph.bag_play` and is imported
only when they run (they need the ROS environment, ``.venv/a2llm_env.sh``);
their arguments are defined here so the parser never imports rclpy.
:data:`SUBCOMMANDS` maps an action to ``(add_arguments, run, help)``.
"""
from __future__ import annotations

import json

HELP = "Record, play, summarise or export rosbag2 bags, and make fixture bags"
STORAGE_CHOICES = ("mcap", "sqlite3")
DISTRO_CHOICES = ("kilted", "jazzy", "humble")
DEFAULT_CLOCK_HZ = 100.0


def _add_fixtures(p) -> None:
    p.add_argument("--out", required=True, help="output directory (cache)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--names", default=None,
                   help="comma-separated fixture names (default: all but 'malformed')")
    p.add_argument("--malformed", action="store_true",
                   help="also write the malformed fixture (holds a 10 MB message)")


def _add_export(p) -> None:
    p.add_argument("bag", help="bag directory")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--audio-topic", help="audio topic -> WAV")
    group.add_argument("--flame-topic", help="FlameChunk/FlameFrame topic -> NPZ")
    p.add_argument("--out", required=True, help="output .wav or .npz")
    p.add_argument("--info-topic", default=None,
                   help="AudioInfo topic (default: the one next to the audio topic)")
    p.add_argument("--rate", type=int, default=None, help="output sample rate (Hz)")
    p.add_argument("--channels", type=int, default=None, help="output channel count")


def _add_info(p) -> None:
    p.add_argument("bag", help="bag directory")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _fixtures(args) -> int:
    from a2llm_ros.tools.bags.fixtures import DEFAULT_FIXTURES, make_fixtures

    names = args.names.split(",") if args.names else list(DEFAULT_FIXTURES)
    if args.malformed and "malformed" not in names:
        names.append("malformed")
    metas = make_fixtures(args.out, seed=args.seed, names=names)
    for name, meta in metas.items():
        print(f"{name:16s} {meta['bytes'] / 1e6:6.2f} MB  {meta['duration_s']:5.2f} s  "
              f"{meta['sample_rate']} Hz x{meta['channels']} {meta['sample_format']}  "
              f"{meta['audio_topic']}")
    return 0


def _export(args) -> int:
    from a2llm_ros.tools.bags.export import export_audio, export_flame

    if args.audio_topic:
        report = export_audio(args.bag, args.audio_topic, args.out, info_topic=args.info_topic,
                              sample_rate=args.rate, channels=args.channels)
        print(f"wrote {args.out}: {report.duration_s:.2f} s, {report.sample_rate} Hz "
              f"x{report.channels}, {report.n_used}/{report.n_messages} messages used")
        for reason, count in sorted(report.skipped.items()):
            print(f"  skipped {count} message(s): {reason}")
        for reason, count in sorted(report.warnings.items()):
            print(f"  warning x{count}: {reason}")
        return 0
    report = export_flame(args.bag, args.flame_topic, args.out)
    print(f"wrote {args.out}: {report.n_frames} frames x {report.dim} "
          f"from {report.n_messages} messages")
    for reason, count in sorted(report.skipped.items()):
        print(f"  skipped {count} frame(s): {reason}")
    return 0


def _info(args) -> int:
    from a2llm_ros.tools.bags.io import bag_summary

    summary = bag_summary(args.bag)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"bag: {summary['path']} ({summary['storage']}, rosbag2 v{summary['version']})")
    print(f"messages: {summary['message_count']}  duration: "
          f"{summary['duration_ns'] / 1e9:.3f} s  start: {summary['start_ns'] / 1e9:.3f}")
    for topic, entry in sorted(summary["topics"].items()):
        print(f"  {topic:28s} {entry['type']:44s} {entry['count']:7d}  "
              f"{', '.join(entry['qos'])}")
    return 0


def add_record_arguments(p) -> None:
    """Arguments of ``a2llm bag record``
    (and ``python -m a2llm_ros.tools.rosgraph.bag_record``)."""
    p.add_argument("topics", nargs="*", help="topics to record")
    p.add_argument("-a", "--all", action="store_true",
                   help="record every topic (not /rosout, /parameter_events, hidden ones)")
    p.add_argument("-o", "--output", default=None,
                   help="bag directory to create (default rosbag2_<date>-<time>)")
    p.add_argument("-s", "--storage", choices=STORAGE_CHOICES, default="mcap")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("-e", "--exclude", default=None, metavar="REGEX",
                   help="skip topics matching this regular expression")
    p.add_argument("--distro", choices=DISTRO_CHOICES, default="kilted",
                   help="rosbag2 metadata layout (humble: version 8)")


def add_play_arguments(p) -> None:
    """Arguments of ``a2llm bag play`` (and ``python -m a2llm_ros.tools.rosgraph.bag_play``)."""
    p.add_argument("bag", help="bag directory (MCAP or sqlite3)")
    p.add_argument("-r", "--rate", type=float, default=1.0, help="playback speed factor")
    p.add_argument("-l", "--loop", action="store_true", help="replay until Ctrl-C")
    p.add_argument("--clock", nargs="?", type=float, const=DEFAULT_CLOCK_HZ, default=None,
                   metavar="HZ", help="publish /clock from bag time "
                   f"(default {DEFAULT_CLOCK_HZ:g} Hz) for use_sim_time nodes")
    p.add_argument("--topics", nargs="+", default=None, help="only these topics")
    p.add_argument("--start-offset", type=float, default=0.0, metavar="S",
                   help="start S seconds into the bag")
    p.add_argument("-d", "--delay", type=float, default=0.0, metavar="S",
                   help="wait S seconds before playing")
    p.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for every topic to have a subscriber")
    p.add_argument("--remap", nargs="+", default=(), metavar="FROM:=TO",
                   help="publish bag topic FROM on topic TO")


def _ros_module(name: str):
    """Import ``a2llm_ros.tools.rosgraph.<name>``; None (with a hint) outside ROS."""
    import importlib
    import sys

    try:
        return importlib.import_module(f"a2llm_ros.tools.rosgraph.{name}")
    except ImportError as exc:
        print(f"a2llm bag: this action needs ROS 2 (rclpy): {exc}. Enter the environment "
              "with `. .venv/a2llm_env.sh` (or `make shell`).", file=sys.stderr)
        return None


def _record(args) -> int:
    module = _ros_module("bag_record")
    return 1 if module is None else module.run(args)


def _play(args) -> int:
    module = _ros_module("bag_play")
    return 1 if module is None else module.run(args)


#: action -> (add_arguments, run, help).
SUBCOMMANDS = {
    "fixtures": (_add_fixtures, _fixtures, "write the deterministic fixture bags"),
    "export": (_add_export, _export, "export an audio topic to WAV or a FLAME topic to NPZ"),
    "info": (_add_info, _info, "print topics, types, counts, QoS and duration"),
    "record": (add_record_arguments, _record,
               "record live topics to an MCAP (or sqlite3) bag (needs ROS 2)"),
    "play": (add_play_arguments, _play,
             "publish a bag with its original timing, --rate, --loop, /clock (needs ROS 2)"),
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="bag_cmd", metavar="ACTION", required=True)
    for action, (add, _, help_text) in SUBCOMMANDS.items():
        add(sub.add_parser(action, help=help_text, description=help_text))


def run(args) -> int:
    return int(SUBCOMMANDS[args.bag_cmd][1](args) or 0)
