"""``a2llm bag``: rosbag2 fixtures, export and inspection (no rclpy needed).

* ``a2llm bag fixtures --out DIR [--seed N] [--names a,b] [--malformed]``
* ``a2llm bag export BAG --audio-topic T --out x.wav [--info-topic I] [--rate R]``
* ``a2llm bag export BAG --flame-topic T --out x.npz``
* ``a2llm bag info BAG [--json]``

Live subcommands (``record``, ``play``) talk to a running ROS graph and are
registered by the ROS layer: :data:`SUBCOMMANDS` maps an action to its
``(add_arguments, run)`` pair, and :func:`add_arguments` builds one subparser
per entry, so adding them is two more entries.
"""
from __future__ import annotations

import json

HELP = "Make fixture bags, export bag topics to WAV/NPZ, or summarise a bag"


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
    from a2llm_ros.bags.fixtures import DEFAULT_FIXTURES, make_fixtures

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
    from a2llm_ros.bags.export import export_audio, export_flame

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
    from a2llm_ros.bags.io import bag_summary

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


#: action -> (add_arguments, run, help); the ROS layer adds "record" and "play" here.
SUBCOMMANDS = {
    "fixtures": (_add_fixtures, _fixtures, "write the deterministic fixture bags"),
    "export": (_add_export, _export, "export an audio topic to WAV or a FLAME topic to NPZ"),
    "info": (_add_info, _info, "print topics, types, counts, QoS and duration"),
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="bag_cmd", metavar="ACTION", required=True)
    for action, (add, _, help_text) in SUBCOMMANDS.items():
        add(sub.add_parser(action, help=help_text, description=help_text))


def run(args) -> int:
    return int(SUBCOMMANDS[args.bag_cmd][1](args) or 0)
