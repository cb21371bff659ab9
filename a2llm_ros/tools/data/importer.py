"""Import real recordings and face-tracker FLAME tracks into FLAME-QA.

Inputs (``a2llm data import --audio-dir A --transcripts T --flame-dir F --out O``):

Transcripts
    ``.csv`` / ``.tsv`` with a header row, or ``.json`` (a list of objects or
    ``{"samples": [...]}``).  Columns: ``id``, ``question_text``, ``answer_text``
    (required); ``emotion`` (default ``neutral``), ``split`` (default ``train``),
    ``intensity``, ``answer_id`` (default: index of the distinct answer text in
    order of appearance), ``question_voice``, ``answer_voice``,
    ``question_audio`` / ``answer_audio`` (paths under the audio dir, default
    ``<id>.question.wav`` / ``<id>.answer.wav``), ``flame`` (path under the flame
    dir, default ``<id>.npz``, ``<id>.npy`` or the folder ``<id>/``), ``fps``
    (per-row frame rate of the track).
Audio
    anything libsndfile reads (wav, flac, ogg); mixed to mono, resampled to 16 kHz.
FLAME tracks (the answer's face, as trackers such as SMIRK or EMOCA write)
    * per-sequence ``.npz`` with arrays ``[T, k]`` under any of these keys:
      expression: ``expression``, ``expression_params``, ``exp``, ``expr``,
      ``expcode`` (50 or 100 columns; the first ``n_expr`` are kept, fewer are
      zero-padded); jaw: ``jaw_pose``, ``jaw``, ``jaw_params`` (3); head:
      ``global_pose``, ``head_pose``, ``pose_params``, ``head_rotation``,
      ``global_rotation`` (3); combined ``pose`` / ``posecode`` (6 = head 3 +
      jaw 3, used for blocks not given separately); eyelids: ``eyelid``,
      ``eyelids``, ``eyelid_params`` (2, 0 open .. 1 closed); optional scalar ``fps``;
    * per-sequence ``.npy`` ``[T, 58]`` already in the FLAME-QA layout;
    * a folder of per-frame ``.npz`` (same keys, one frame each) or ``.npy``
      (58 values) files, in natural name order.
    The frame rate is the file's ``fps``, else the row's ``fps``, else ``--fps``
    (default 30).

Tracks are resampled to 25 fps by linear interpolation of every value.  For
the rotations (jaw, head) this interpolates axis-angle vectors componentwise,
which is accurate for the small angles of faces (well under 0.5 rad) but not
a true slerp.  Missing blocks are filled with zeros and counted in the report.
The resampled track is fitted onto ``round(answer_seconds * 25)`` frames when
the two differ by at most ``max_mismatch_frames`` (end frames are held);
otherwise the sample is skipped and reported.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from a2llm_ros.constants import FLAME_FPS, SAMPLE_RATE
from a2llm_ros.tools.data.flameqa import (FlameQASample, FlameQAWriter, SampleError,
                                          frames_for_seconds)
from a2llm_ros.flame.layout import DEFAULT_LAYOUT, N_EYELIDS, N_HEAD, N_JAW, FlameLayout

DEFAULT_TRACK_FPS = 30.0
DEFAULT_MAX_MISMATCH_FRAMES = 2
BLOCKS = ("expression", "jaw_pose", "head_rotation", "eyelids")
KEY_ALIASES: Dict[str, Tuple[str, ...]] = {
    "expression": ("expression", "expression_params", "exp", "expr", "expcode"),
    "jaw_pose": ("jaw_pose", "jaw", "jaw_params"),
    "head_rotation": ("global_pose", "head_pose", "pose_params", "head_rotation",
                      "global_rotation"),
    "eyelids": ("eyelid", "eyelids", "eyelid_params"),
    "pose6": ("pose", "posecode"),
}
REQUIRED_COLUMNS = ("id", "question_text", "answer_text")


@dataclass
class ImportReport:
    """What :func:`import_assets` did."""

    n_imported: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    missing_blocks: Dict[str, int] = field(default_factory=dict)
    expression_resized: Dict[str, int] = field(default_factory=dict)
    track_fps: Dict[str, int] = field(default_factory=dict)

    def note(self, table: Dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    def merge(self, other: "ImportReport") -> None:
        """Add ``other``'s block/fps notes (used once a sample is accepted)."""
        for mine, theirs in ((self.missing_blocks, other.missing_blocks),
                             (self.expression_resized, other.expression_resized),
                             (self.track_fps, other.track_fps)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n

    def to_dict(self) -> dict:
        return {"n_imported": self.n_imported, "skipped": [list(s) for s in self.skipped],
                "missing_blocks": self.missing_blocks,
                "expression_resized": self.expression_resized, "track_fps": self.track_fps}


# --------------------------------------------------------------------------- transcripts

def read_transcripts(path: str) -> List[dict]:
    """Rows of a CSV/TSV/JSON transcript file (see module docstring)."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        rows = data["samples"] if isinstance(data, dict) else data
    else:
        delimiter = "\t" if ext in (".tsv", ".tab") else ","
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter=delimiter))
    rows = [{k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in r.items()}
            for r in rows]
    for i, row in enumerate(rows):
        missing = [c for c in REQUIRED_COLUMNS if not row.get(c)]
        if missing:
            raise ValueError(f"{path}: row {i + 1} lacks {', '.join(missing)}")
    return rows


def _answer_ids(rows: List[dict]) -> List[int]:
    seen: Dict[str, int] = {}
    out = []
    for row in rows:
        if row.get("answer_id") not in (None, ""):
            out.append(int(row["answer_id"]))
            continue
        out.append(seen.setdefault(row["answer_text"].strip().lower(), len(seen)))
    return out


# --------------------------------------------------------------------------- audio

def load_audio(path: str) -> np.ndarray:
    """Audio file -> mono float32 at 16 kHz."""
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        g = np.gcd(int(sr), SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // g, int(sr) // g)
    return np.asarray(mono, dtype=np.float32)


# --------------------------------------------------------------------------- FLAME tracks

def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _as_2d(value, n_frames: Optional[int] = None) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if n_frames is None:
        return arr.reshape(arr.shape[0], -1) if arr.ndim >= 2 else arr.reshape(1, -1)
    return arr.reshape(n_frames, -1)


def _pick(arrays: Dict[str, np.ndarray], block: str) -> Optional[np.ndarray]:
    for key in KEY_ALIASES[block]:
        if key in arrays:
            return _as_2d(arrays[key])
    return None


def blocks_from_arrays(arrays: Dict[str, np.ndarray]) -> Dict[str, Optional[np.ndarray]]:
    """Tracker arrays (any alias) -> ``{block: [T, k] or None}``."""
    blocks = {b: _pick(arrays, b) for b in BLOCKS}
    pose6 = _pick(arrays, "pose6")
    if pose6 is not None and pose6.shape[1] == N_HEAD + N_JAW:
        if blocks["head_rotation"] is None:
            blocks["head_rotation"] = pose6[:, :N_HEAD]
        if blocks["jaw_pose"] is None:
            blocks["jaw_pose"] = pose6[:, N_HEAD:]
    return blocks


def _frames_from_dir(path: str, layout: FlameLayout) -> Tuple[dict, Optional[float]]:
    names = sorted((n for n in os.listdir(path) if n.endswith((".npz", ".npy"))),
                   key=_natural_key)
    if not names:
        raise SampleError("missing_file", f"no per-frame .npz/.npy files in {path}")
    per_key: Dict[str, list] = {}
    fps = None
    for name in names:
        arrays = _read_arrays(os.path.join(path, name), layout)
        fps = float(arrays.pop("fps")) if "fps" in arrays else fps
        for key, value in arrays.items():
            per_key.setdefault(key, []).append(np.asarray(value, np.float64).reshape(-1))
    return {k: np.stack(v) for k, v in per_key.items()}, fps


def _read_arrays(path: str, layout: FlameLayout) -> Dict[str, np.ndarray]:
    """One .npz (dict of arrays) or .npy (layout frames, split into blocks)."""
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files if npz[k].dtype.kind in "fiub"}
    frames = np.load(path, allow_pickle=False)
    frames = frames.reshape(1, -1) if frames.ndim == 1 else frames
    if frames.shape[-1] != layout.dim:
        raise SampleError("wrong_flame_width",
                          f"{path}: width {frames.shape[-1]}, expected {layout.dim}")
    return {k: np.asarray(v) for k, v in layout.split(frames).items()}


def load_track(path: str, layout: FlameLayout = DEFAULT_LAYOUT
               ) -> Tuple[Dict[str, Optional[np.ndarray]], Optional[float]]:
    """Read a tracker output (file or per-frame folder) -> (blocks, fps or None)."""
    if os.path.isdir(path):
        arrays, fps = _frames_from_dir(path, layout)
    else:
        arrays = _read_arrays(path, layout)
        fps = float(np.asarray(arrays.pop("fps"))) if "fps" in arrays else None
    return blocks_from_arrays(arrays), fps


def assemble_frames(blocks: Dict[str, Optional[np.ndarray]], layout: FlameLayout,
                    report: Optional[ImportReport] = None) -> np.ndarray:
    """Blocks -> ``[T, dim]``: expression cut/padded to ``n_expr``, missing blocks zero."""
    lengths = {b.shape[0] for b in blocks.values() if b is not None}
    if len(lengths) != 1:
        raise SampleError("bad_track", f"blocks have frame counts {sorted(lengths)}")
    n = lengths.pop()
    widths = {"expression": layout.n_expr, "jaw_pose": N_JAW, "head_rotation": N_HEAD,
              "eyelids": N_EYELIDS}
    parts = []
    for name in BLOCKS:
        block = blocks[name]
        if block is None:
            block = np.zeros((n, widths[name]))
            if report is not None:
                report.note(report.missing_blocks, name)
        elif block.shape[1] != widths[name]:
            if name != "expression":
                raise SampleError("bad_track", f"{name} has {block.shape[1]} values, "
                                               f"expected {widths[name]}")
            if report is not None:
                report.note(report.expression_resized, f"{block.shape[1]}->{layout.n_expr}")
            block = _fit_width(block, layout.n_expr)
        parts.append(block)
    return np.concatenate(parts, axis=1)  # [T, dim]


def _fit_width(block: np.ndarray, width: int) -> np.ndarray:
    if block.shape[1] >= width:
        return block[:, :width]
    return np.pad(block, ((0, 0), (0, width - block.shape[1])))


def resample_track(frames: np.ndarray, fps_in: float, n_out: Optional[int] = None,
                   fps_out: float = FLAME_FPS) -> np.ndarray:
    """Linear-interpolate ``frames`` [T, D] from ``fps_in`` to ``fps_out`` -> [n_out, D].

    Frame ``i`` is at time ``i / fps``; outside the input, end frames are held.
    ``n_out`` defaults to ``round(T / fps_in * fps_out)``.
    """
    n_in = frames.shape[0]
    if n_out is None:
        n_out = int(np.floor(n_in / float(fps_in) * fps_out + 0.5))
    t_in = np.arange(n_in) / float(fps_in)
    t_out = np.arange(n_out) / float(fps_out)
    out = np.empty((n_out, frames.shape[1]), np.float64)
    for d in range(frames.shape[1]):
        out[:, d] = np.interp(t_out, t_in, frames[:, d])
    return out.astype(np.float32)


# --------------------------------------------------------------------------- import

@dataclass
class ImportOptions:
    """Paths and defaults of one import."""

    audio_dir: str
    flame_dir: str
    fps: float = DEFAULT_TRACK_FPS
    max_mismatch_frames: int = DEFAULT_MAX_MISMATCH_FRAMES
    layout: FlameLayout = DEFAULT_LAYOUT


def _find_flame(row: dict, flame_dir: str) -> str:
    if row.get("flame"):
        return os.path.join(flame_dir, row["flame"])
    for candidate in (f"{row['id']}.npz", f"{row['id']}.npy", row["id"]):
        path = os.path.join(flame_dir, candidate)
        if os.path.exists(path):
            return path
    raise SampleError("missing_file", f"no FLAME track for {row['id']} in {flame_dir}")


def _audio_path(row: dict, key: str, audio_dir: str) -> str:
    name = row.get(f"{key}_audio") or f"{row['id']}.{key}.wav"
    path = os.path.join(audio_dir, name)
    if not os.path.exists(path):
        raise SampleError("missing_file", f"no {key} audio {path}")
    return path


def import_row(row: dict, answer_id: int, opts: ImportOptions,
               report: ImportReport) -> FlameQASample:
    """One transcript row -> validated-ready :class:`FlameQASample`."""
    question = load_audio(_audio_path(row, "question", opts.audio_dir))
    answer = load_audio(_audio_path(row, "answer", opts.audio_dir))
    blocks, file_fps = load_track(_find_flame(row, opts.flame_dir), opts.layout)
    fps = file_fps or float(row.get("fps") or opts.fps)
    report.note(report.track_fps, f"{fps:g}")
    frames = assemble_frames(blocks, opts.layout, report)  # [T_in, dim]
    n_audio = frames_for_seconds(len(answer) / float(SAMPLE_RATE))
    n_track = int(np.floor(frames.shape[0] / fps * FLAME_FPS + 0.5))
    if abs(n_track - n_audio) > opts.max_mismatch_frames:
        raise SampleError("duration_mismatch", f"track {n_track} frames at 25 fps vs "
                                               f"answer audio {n_audio} frames")
    return FlameQASample(
        id=str(row["id"]), question_audio=question, question_text=row["question_text"],
        answer_audio=answer, answer_text=row["answer_text"],
        answer_flame=resample_track(frames, fps, n_audio),
        emotion=row.get("emotion") or "neutral", split=row.get("split") or "train",
        question_voice=row.get("question_voice") or "", answer_voice=row.get("answer_voice")
        or "", answer_id=answer_id, intensity=row.get("intensity") or "normal",
        extra={"source_fps": fps})


def import_assets(audio_dir: str, transcripts: str, flame_dir: str, out_dir: str,
                  fps: float = DEFAULT_TRACK_FPS,
                  max_mismatch_frames: int = DEFAULT_MAX_MISMATCH_FRAMES,
                  layout: FlameLayout = DEFAULT_LAYOUT,
                  shard_size: int = 200) -> ImportReport:
    """Convert real assets to a FLAME-QA directory; bad rows are skipped and reported."""
    rows = read_transcripts(transcripts)
    opts = ImportOptions(audio_dir, flame_dir, fps, max_mismatch_frames, layout)
    report = ImportReport()
    source = {"builder": "a2llm_ros.tools.data.importer",
              "transcripts": os.path.basename(transcripts),
              "default_track_fps": fps}
    with FlameQAWriter(out_dir, layout=layout, shard_size=shard_size, source=source) as writer:
        for row, answer_id in zip(rows, _answer_ids(rows)):
            notes = ImportReport()
            try:
                writer.add(import_row(row, answer_id, opts, notes))
                report.n_imported += 1
                report.merge(notes)
            except (SampleError, ValueError, OSError) as exc:
                report.skipped.append((str(row["id"]), str(exc)))
    return report
