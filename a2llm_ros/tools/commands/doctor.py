"""``a2llm doctor``: what is installed, what each backend needs; or what a checkpoint is."""
HELP = ("report Python, torch, ROS 2, message packages and inference backends; with "
        "--checkpoint DIR: its layout, sizes, stored dtype and memory needs")


def add_arguments(parser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when no inference backend is usable (or, with "
                             "--checkpoint, when the checkpoint is unusable)")
    parser.add_argument("--checkpoint", default=None,
                        help="describe this Step-Audio-2-mini folder or A²-LLM checkpoint "
                             "('default' for the shipped one) instead of the environment; "
                             "reads config.json and safetensors headers only")


def run(args) -> int:
    if args.checkpoint is not None:
        from a2llm_ros.tools.doctor import checkpoint_report

        text, ok = checkpoint_report(args.checkpoint)
        print(text)
        return 0 if ok else 1
    from a2llm_ros.tools.doctor import report

    text, ok = report()
    print(text)
    return 1 if (args.strict and not ok) else 0
