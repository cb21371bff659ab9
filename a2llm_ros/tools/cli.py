"""The ``a2llm`` console command.

Each verb lives in ``a2llm_ros.tools.commands.<verb>`` and provides
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Verb modules are imported only when their verb is used, so ``a2llm doctor``
starts fast and works even where heavy dependencies are missing.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: verb -> module under a2llm_ros.tools.commands
VERBS = ("doctor", "init", "generate", "backbone-check", "data", "train", "eval", "export",
         "bench", "bag", "bringup", "demo", "flame", "render")


def _load(verb: str):
    return importlib.import_module(f"a2llm_ros.tools.commands.{verb.replace('-', '_')}")


def build_parser(argv_verb: str | None = None) -> argparse.ArgumentParser:
    """Parser with every verb; only ``argv_verb``'s module adds its arguments."""
    parser = argparse.ArgumentParser(prog="a2llm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        try:
            module = _load(verb) if verb == argv_verb else None
        except ImportError as exc:
            parser.error(f"verb {verb!r} cannot load: {exc}")
        help_text = getattr(module, "HELP", None) if module else _help_of(verb)
        p = sub.add_parser(verb, help=help_text, description=help_text)
        if module is not None:
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def _help_of(verb: str) -> str:
    try:
        return _load(verb).HELP
    except ImportError:
        return "(not available in this build)"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = argv[0] if argv and not argv[0].startswith("-") else None
    if verb is not None and verb not in VERBS:
        print(f"a2llm: unknown verb {verb!r}; known: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    parser = build_parser(verb)
    args = parser.parse_args(argv)
    if verb is None:
        parser.print_help()
        return 0
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
