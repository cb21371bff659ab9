#!/usr/bin/env python3
"""Runtime/tools figures of the package for the README's code map.

Counts the lines of what a robot runs (the package minus its tools) and times importing
it in fresh interpreters (``python -X importtime``), for one or more source trees, e.g.
the tree before and after a change (``git worktree add /tmp/before REV``)::

    python tools/codemap.py --tree before=/tmp/before --tree after=. --runs 5

Import times are ``-X importtime``'s cumulative times of the probe's top-level imports,
medians of ``--runs`` interpreters per tree, the trees interleaved run by run so that both
see the same machine load.  Two imports are timed:

* ``all runtime``: every runtime module (the PyTorch model and generator included);
* ``torch-free runtime``: every runtime module that imports with ``torch`` blocked (an
  import hook raises ImportError), e.g. the nodes, the conversation and the audio front end
  on a machine that runs the model elsewhere.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

#: Paths of the tools inside ``a2llm_ros/`` in either layout (before the split they sat
#: beside the runtime; after it they are all under ``tools/``).
TOOL_PATHS = (
    "tools", "training", "data", "demo", "render", "bags", "commands", "cli.py", "doctor.py",
    "evaluation.py", "metrics.py", "asr.py", "bench_core.py", "bench_codec.py",
    "bench_graph.py", "bench_turns.py", "engines/benchmark.py", "engines/exporter.py",
    "engines/onnx_export.py", "engines/parity.py", "engines/graphs.py",
    "ros/graph_run.py", "ros/graph_procs.py", "ros/bag_play.py", "ros/bag_record.py",
    "ros/bringup.py",
)
SKIP = ("_vendor", "checkpoints", "__main__.py")

PROBE = r"""
import importlib, sys, time
block = sys.argv[1] == "block"
if block:
    import importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] == 'torch':
                raise ImportError('torch blocked')
    sys.meta_path.insert(0, Block())
ok, failed = [], []
sys.stderr.write("CODEMAP-START\n")
sys.stderr.flush()
t0 = time.perf_counter()
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
        ok.append(name)
    except Exception:
        failed.append(name)
dt = time.perf_counter() - t0
import json
print(json.dumps({"seconds": dt, "ok": ok, "failed": failed, "torch": "torch" in sys.modules,
                  "modules": len(sys.modules)}))
"""


def runtime_files(root: Path) -> List[Path]:
    """The runtime's ``.py`` files of the package under ``root``."""
    pkg = root / "a2llm_ros"
    out = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg).as_posix()
        if rel.startswith(SKIP) or any(rel == t or rel.startswith(t + "/")
                                       for t in TOOL_PATHS):
            continue
        out.append(path)
    return out


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def count_lines(files: List[Path]) -> int:
    return sum(len(p.read_text().splitlines()) for p in files)


def probe(root: Path, modules: List[str], block: bool) -> dict:
    """Import ``modules`` in a fresh ``python -X importtime``; adds ``importtime_s``: the
    cumulative times of the top-level imports the probe made (after its start marker)."""
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", PROBE,
                          "block" if block else "all", *modules],
                         env=env, cwd=str(root), capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    lines = out.stderr.split("CODEMAP-START\n", 1)[-1].splitlines()
    total_us = 0
    for line in lines:
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|", 2)
            if not name.startswith("  ") and cumulative.strip().isdigit():
                total_us += int(cumulative)
    res["importtime_s"] = total_us / 1e6
    return res


def measure(trees: List[Tuple[str, Path]], runs: int) -> Dict[str, dict]:
    """Lines and median import seconds per tree (see module docstring)."""
    info = {}
    for name, root in trees:
        files = runtime_files(root)
        mods = [module_name(root, p) for p in files]
        free = probe(root, mods, block=True)["ok"]
        info[name] = {"root": str(root), "runtime_files": len(files),
                      "runtime_lines": count_lines(files),
                      "package_lines": count_lines([p for p in (root / "a2llm_ros").rglob("*.py")
                                                    if "_vendor" not in p.parts]),
                      "modules": mods, "torch_free": free, "all_s": [], "free_s": []}
    for _ in range(runs):
        for name, _root in trees:
            i = info[name]
            root = Path(i["root"])
            i["all_s"].append(probe(root, i["modules"], block=False)["importtime_s"])
            i["free_s"].append(probe(root, i["torch_free"], block=True)["importtime_s"])
    for i in info.values():
        i["all_median_s"] = statistics.median(i["all_s"])
        i["free_median_s"] = statistics.median(i["free_s"])
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[],
                    help="NAME=PATH of a source tree (repeatable; default: this tree)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree] \
        or [("this", Path(__file__).resolve().parents[1])]
    info = measure(trees, args.runs)
    print("| tree | runtime files | runtime lines | package lines | import all runtime (s) "
          "| torch-free modules | import torch-free runtime (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, i in info.items():
        print(f"| {name} | {i['runtime_files']} | {i['runtime_lines']} | {i['package_lines']} "
              f"| {i['all_median_s']:.2f} | {len(i['torch_free'])} of {len(i['modules'])} "
              f"| {i['free_median_s']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
