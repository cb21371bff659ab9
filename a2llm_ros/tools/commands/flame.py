"""``a2llm flame``: convert a licensed FLAME model, or generate the project's head."""
from __future__ import annotations

import argparse
import sys

HELP = "FLAME head models: convert a licensed FLAME pickle to .npz, or generate an open head"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="flame_action", metavar="ACTION")
    conv = sub.add_parser("convert", help="FLAME pickle (file or directory) -> plain .npz")
    conv.add_argument("--model", required=True,
                      help="FLAME .pkl (e.g. generic_model.pkl) or a directory holding it, "
                           "flame_static_embedding.pkl and optionally l_eyelid/r_eyelid.npy")
    conv.add_argument("--out", required=True, help="output .npz path")
    conv.add_argument("--embedding", default=None,
                      help="flame_static_embedding.pkl if not next to the model")
    conv.add_argument("--num-betas", type=int, default=300,
                      help="identity components to keep (0 = mean shape only)")
    conv.add_argument("--num-expr", type=int, default=100,
                      help="expression components to keep (>= the layout's 50)")
    gen = sub.add_parser("generate", help="write the generated FLAME-format head")
    gen.add_argument("--out", required=True, help="output directory")


def _convert(args) -> int:
    from a2llm_ros.flame.convert import convert_flame
    arrays = convert_flame(args.model, args.out, embedding=args.embedding,
                           num_betas=args.num_betas, num_expr=args.num_expr)
    lids = "with" if arrays.eyelids is not None else "without"
    print(f"wrote {args.out}: {arrays.n_verts} vertices, {arrays.faces.shape[0]} faces, "
          f"{arrays.shapedirs.shape[-1]} shape + {arrays.exprdirs.shape[-1]} expression "
          f"components, {lids} eyelid blendshapes")
    return 0


def _generate(args) -> int:
    from a2llm_ros.flame.head_model import build_head
    head = build_head()
    paths = head.write_flame_dir(args.out)
    print(f"wrote generated head ({head.arrays.n_verts} vertices) to {args.out}:")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    print("load with smplx.FLAME(model_path=DIR, num_expression_coeffs=50) or "
          "FlameMesh(DIR + '/head_model.npz')")
    return 0


def run(args) -> int:
    action = getattr(args, "flame_action", None)
    if action is None:
        print("usage: a2llm flame {convert,generate} ... (see a2llm flame -h)", file=sys.stderr)
        return 2
    try:
        return _convert(args) if action == "convert" else _generate(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"a2llm flame {action}: {exc}", file=sys.stderr)
        return 1
