"""``a2llm doctor``: what is installed, what each backend needs."""
HELP = "report Python, torch, ROS 2, message packages and inference backends"


def add_arguments(parser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when no inference backend is usable")


def run(args) -> int:
    from a2llm_ros.doctor import report

    text, ok = report()
    print(text)
    return 1 if (args.strict and not ok) else 0
