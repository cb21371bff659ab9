"""CPU cost of ``face_preview_node`` per second of FLAME input.

``python -m a2llm_ros.ros.preview_cpu [--frames 500] [--rate-hz 10] [--max-faces 0]``

Drives a :class:`~a2llm_ros.ros.face_preview_node.FacePreviewNode` (worker
thread off, ``publish_without_subscribers`` on so every mesh is built and
published as when RViz watches) with synthetic FLAME frames at 25 fps on a
simulated clock, without sleeping: each 5-frame FlameChunk is deserialized and
handed to the subscription callback, then the node's :meth:`tick` runs at
``rate_hz`` over the chunk's 200 ms.  The process CPU time
(``time.process_time``: all threads, DDS included) of N frames divided by
their N / 25 s of input is the fraction of one core the node needs.

As in the node's own process, numpy's OpenBLAS runs with ``blas_threads``
threads during the measurement (restored afterwards).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from a2llm_ros.constants import FLAME_FPS, FRAMES_PER_SEGMENT, NS_PER_S

__all__ = ["PreviewCpu", "synthetic_frames", "measure_preview_cpu", "main"]

FRAME_NS = NS_PER_S // FLAME_FPS
#: Frames measured by default (20 s of input).
DEFAULT_FRAMES = 500
#: Frames run before the clock starts (imports, caches, first allocations).
WARMUP_FRAMES = 25
#: Stamp of the first synthetic frame (ns).
START_NS = 1_700_000_000 * NS_PER_S
#: Synthetic motion: jaw opening and head nod amplitudes (rad) and rates (Hz).
JAW_MEAN, JAW_AMPLITUDE, JAW_HZ = 0.15, 0.15, 3.0
HEAD_AMPLITUDE, HEAD_HZ = 0.1, 0.3
EXPR_AMPLITUDE = 0.8


@dataclasses.dataclass
class PreviewCpu:
    """CPU time of the preview over ``n_frames`` frames of input."""

    n_frames: int
    rate_hz: float
    renders: int
    cpu_s: float
    n_points: int

    @property
    def input_s(self) -> float:
        """Seconds of FLAME input (frames at 25 fps)."""
        return self.n_frames / FLAME_FPS

    @property
    def core_fraction(self) -> float:
        """CPU seconds per second of input: the share of one core the node needs."""
        return self.cpu_s / self.input_s

    @property
    def ms_per_render(self) -> float:
        return 1e3 * self.cpu_s / max(1, self.renders)

    def summary(self) -> str:
        return (f"face_preview_node: {100 * self.core_fraction:.1f} % of one core at "
                f"rate_hz {self.rate_hz:g} ({self.cpu_s:.3f} CPU-s for {self.input_s:.1f} s "
                f"of FLAME input, {self.renders} markers of {self.n_points} points, "
                f"{self.ms_per_render:.2f} ms each)")

    def to_dict(self) -> Dict[str, Any]:
        return dict(dataclasses.asdict(self), input_s=self.input_s,
                    core_fraction=self.core_fraction, ms_per_render=self.ms_per_render)


def synthetic_frames(n_frames: int, dim: int, n_expr: int) -> np.ndarray:
    """Smooth talking-like FLAME frames ``[n_frames, dim]`` float32 (deterministic)."""
    t = np.arange(n_frames)[:, None] / FLAME_FPS
    frames = np.zeros((n_frames, dim), np.float32)
    frames[:, :n_expr] = EXPR_AMPLITUDE * np.sin(2 * np.pi * 0.5 * t + np.arange(n_expr))
    frames[:, n_expr] = (JAW_MEAN + JAW_AMPLITUDE * np.sin(2 * np.pi * JAW_HZ * t))[:, 0]
    frames[:, n_expr + 3] = (HEAD_AMPLITUDE * np.sin(2 * np.pi * HEAD_HZ * t))[:, 0]
    return frames


def _serialized_chunks(frames: np.ndarray, start_ns: int) -> List[Tuple[int, bytes]]:
    """``(first stamp, serialized FlameChunk)`` of every 5 frames, as a2llm_node sends them."""
    from rclpy.serialization import serialize_message

    from a2llm_ros.ros import msgconv as mc
    out = []
    for first in range(0, len(frames), FRAMES_PER_SEGMENT):
        stamp = start_ns + first * FRAME_NS
        msg = mc.flame_chunk_msg(frames[first:first + FRAMES_PER_SEGMENT], stamp, 1, first,
                                 "speech", "head")
        out.append((stamp, serialize_message(msg)))
    return out


def _drive(node, chunks: List[Tuple[int, bytes]], rate_hz: float) -> int:
    """Feed the chunks and tick the node on the simulated clock; returns markers published."""
    from rclpy.serialization import deserialize_message

    from a2llm_ros.msg import FlameChunk
    tick_ns = int(round(NS_PER_S / rate_hz))
    published = 0
    next_tick = chunks[0][0] if chunks else 0
    for stamp, raw in chunks:
        node.on_chunk(deserialize_message(raw, FlameChunk))
        end = stamp + FRAMES_PER_SEGMENT * FRAME_NS
        while next_tick < end:
            published += node.tick(next_tick, next_tick / NS_PER_S)
            next_tick += tick_ns
    return published


def measure_preview_cpu(n_frames: int = DEFAULT_FRAMES,
                        overrides: Optional[Mapping[str, Any]] = None,
                        context=None) -> PreviewCpu:
    """CPU cost of the preview for ``n_frames`` synthetic frames (see module docstring).

    ``overrides``: node parameters (e.g. ``rate_hz``, ``max_faces``);
    ``context``: an initialised rclpy Context (default: one of its own).
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from a2llm_ros.flame.preview_mesh import set_blas_threads
    from a2llm_ros.ros.face_preview_node import FacePreviewNode
    params = dict(overrides or {}, publish_without_subscribers=True)
    own = context is None
    if own:
        context = Context()
        rclpy.init(context=context)
    node = FacePreviewNode(namespace=f"/preview_cpu_{os.getpid()}", context=context,
                           start_worker=False,
                           parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    threads_before = (set_blas_threads(node.cfg.blas_threads) if node.cfg.blas_threads > 0
                      else None)
    try:
        layout = node.mesh.layout
        frames = synthetic_frames(WARMUP_FRAMES + n_frames, layout.dim, layout.n_expr)
        chunks = _serialized_chunks(frames, START_NS)
        n_warm = WARMUP_FRAMES // FRAMES_PER_SEGMENT
        _drive(node, chunks[:n_warm], node.cfg.rate_hz)
        cpu0 = time.process_time()
        renders = _drive(node, chunks[n_warm:], node.cfg.rate_hz)
        cpu = time.process_time() - cpu0
        return PreviewCpu(n_frames=len(frames) - n_warm * FRAMES_PER_SEGMENT,
                          rate_hz=node.cfg.rate_hz, renders=renders, cpu_s=cpu,
                          n_points=node.n_marker_points)
    finally:
        if threads_before is not None:
            set_blas_threads(threads_before)
        node.destroy_node()
        if own:
            rclpy.try_shutdown(context=context)


def main(argv=None) -> int:
    """Print the preview's CPU share (and write it as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m a2llm_ros.ros.preview_cpu",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                        help="FLAME frames of input (25 fps)")
    parser.add_argument("--rate-hz", type=float, default=None, help="node rate_hz")
    parser.add_argument("--max-faces", type=int, default=None, help="node max_faces")
    parser.add_argument("--blas-threads", type=int, default=None, help="node blas_threads")
    parser.add_argument("--model", default=None, help="node model")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    given = {"rate_hz": args.rate_hz, "max_faces": args.max_faces,
             "blas_threads": args.blas_threads, "model": args.model}
    overrides = {name: value for name, value in given.items() if value is not None}
    res = measure_preview_cpu(args.frames, overrides)
    print(res.summary())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res.to_dict(), fh, indent=2)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
