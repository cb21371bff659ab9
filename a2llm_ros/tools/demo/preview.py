"""``preview.png``: do the lips follow the sound?  One image, three rows on one time axis.

1. A strip of ``n_faces`` rendered faces (the FLAME frames through
   :class:`~a2llm_ros.flame.mesh.FlameMesh`, the generated head by default,
   frontal, zoomed on the face so the mouth is visible), each labelled with its
   number and time.
2. The waveform (min/max envelope per pixel column) with its 25 fps RMS
   envelope.
3. The jaw opening: FLAME jaw pitch (``jaw_pose[0]``, rad, left axis) and the
   mesh's inner-lip gap (mm, right axis, head pose removed).

Numbered vertical markers in rows 2 and 3 show where the strip's frames are.
Frames for the strip (``pick``): ``"speech"`` (default, :func:`pick_speech_frames`:
``n_faces - 1`` frames inside the speech -- its frames in equal parts,
alternately the most open and the most closed mouth of each part -- plus one
frame of the listening face, labelled "listening"), ``"extremes"`` (the same
over the whole timeline), ``"peaks"`` (the ``n_faces`` highest lip-gap peaks)
or ``"even"`` (evenly spaced).  Speech is where the frame's RMS exceeds
:data:`SPEECH_REL_RMS` of its maximum (and the caller's ``listening`` mask,
e.g. the demo's turn id 0, is false).

Faces are drawn by the project's renderer (:mod:`a2llm_ros.tools.render.raster`:
smooth shading, dark mouth interior, eyes and lids).  Pure numpy +
matplotlib (Agg canvas, no pyplot state); no ROS.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from a2llm_ros.constants import FLAME_FPS, SAMPLE_RATE
from a2llm_ros.flame.layout import DEFAULT_LAYOUT, FlameLayout

PICKS = ("speech", "extremes", "peaks", "even")
#: Speech: frames whose RMS exceeds this fraction of the loudest frame's (and an absolute floor).
SPEECH_REL_RMS = 0.1
SPEECH_MIN_RMS = 1e-4
LISTENING_LABEL = "listening"
FACE_SUPERSAMPLE = 2
DEFAULT_SIZE = (1600, 900)  # pixels (width, height)
DPI = 100
WAVE_BINS = 2000  # min/max envelope columns of the waveform plot
MIN_RENDER_PX = 64
# Layout in pixels: margins, gaps between faces / strip and plots / the two plots.
TOP_PX, BOTTOM_PX, LEFT_PX, RIGHT_PX = 70, 60, 90, 90
FACE_GAP_PX, STRIP_GAP_PX, PANEL_GAP_PX = 8, 50, 30
MAX_FACE_FRAC = 0.34  # largest face cell height, fraction of the image height
MM = 1000.0
JAW_COLOR, GAP_COLOR, MARK_COLOR = "tab:blue", "tab:red", "0.35"


@dataclass
class PreviewInfo:
    """What :func:`render_preview` drew (for tests and captions)."""

    path: Path
    size: Tuple[int, int]  # PNG (width, height) in pixels
    strip_frames: np.ndarray  # [n] frame indices shown in the strip
    strip_times_s: np.ndarray  # [n]
    strip_labels: Tuple[str, ...]  # [n] "speech" or "listening"
    speech: np.ndarray  # [T] bool, frames counted as speech
    strip_box: Tuple[int, int, int, int]  # face strip in the PNG: (top, bottom, left, right) px
    jaw_pitch: np.ndarray  # [T] rad
    lip_gap_mm: np.ndarray  # [T]
    rms: np.ndarray  # [T'] waveform RMS per FLAME frame


def pick_frames(lip_gap: np.ndarray, n: int, how: str = "extremes") -> np.ndarray:
    """Indices [n'] (sorted, unique, n' <= n) of the frames to show, from the lip-gap curve [T]."""
    if how not in PICKS or how == "speech":
        raise ValueError(f"pick must be one of {PICKS[1:]} (speech: pick_speech_frames), "
                         f"got {how!r}")
    total = len(lip_gap)
    n = max(1, min(n, total))
    if how == "even":
        return np.unique(np.linspace(0, total - 1, n).round().astype(int))
    if how == "peaks":
        from scipy.signal import find_peaks

        peaks, _ = find_peaks(lip_gap, distance=max(1, total // (2 * n)))
        top = peaks[np.argsort(lip_gap[peaks])[::-1][:n]]
        if len(top) < n:
            top = np.concatenate([top, pick_frames(lip_gap, n - len(top), "even")])
        return np.unique(top)[:n]
    edges = np.linspace(0, total, n + 1).round().astype(int)
    out = []
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        if hi <= lo:
            continue
        part = lip_gap[lo:hi]
        out.append(lo + int(np.argmax(part) if k % 2 == 0 else np.argmin(part)))
    return np.unique(out)


def speech_frames(rms: np.ndarray, listening: Optional[np.ndarray] = None) -> np.ndarray:
    """Speech mask [T] from the per-frame RMS [T] (and a listening mask [T] to exclude)."""
    rms = np.asarray(rms, np.float64)
    peak = float(rms.max()) if len(rms) else 0.0
    speech = rms > max(SPEECH_REL_RMS * peak, SPEECH_MIN_RMS)
    if listening is not None:
        speech &= ~np.asarray(listening, bool)
    return speech


def pick_speech_frames(lip_gap: np.ndarray, speech: np.ndarray, n: int,
                       listening: Optional[np.ndarray] = None) -> Tuple[np.ndarray, tuple]:
    """(indices [n'] sorted, labels [n']): ``n - 1`` frames in speech plus one listening frame.

    Speech frames (mask ``speech`` [T]) are split into ``n - 1`` equal parts (in
    time order), alternately the most open and the most closed mouth of each
    part (lip gap [T]); the listening frame is the middle of the longest run of
    ``listening`` [T] (default: not speech).  Without speech: ``"extremes"`` over
    the whole timeline.
    """
    speech = np.asarray(speech, bool)
    quiet = ~speech if listening is None else np.asarray(listening, bool)
    inside = np.nonzero(speech)[0]  # [S]
    if not len(inside):
        chosen = pick_frames(lip_gap, n, "extremes")
        return chosen, tuple(LISTENING_LABEL if quiet[i] else "speech" for i in chosen)
    n_speech = max(1, min(n - 1 if quiet.any() else n, len(inside)))
    part = pick_frames(lip_gap[inside], n_speech, "extremes")
    chosen = {int(i): "speech" for i in inside[part]}
    if quiet.any() and n > 1:
        chosen[_middle_of_longest_run(quiet)] = LISTENING_LABEL
    order = sorted(chosen)
    return np.array(order, int), tuple(chosen[i] for i in order)


def _middle_of_longest_run(mask: np.ndarray) -> int:
    """Index of the middle of the longest run of True in mask [T] (one exists)."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    k = int(np.argmax(ends - starts))
    return int((starts[k] + ends[k] - 1) // 2)


def frame_rms(wave: np.ndarray, n_frames: int, sample_rate: int = SAMPLE_RATE,
              fps: float = FLAME_FPS) -> np.ndarray:
    """RMS of ``wave`` [N] per FLAME frame -> [n_frames] (zeros past the end of the audio)."""
    hop = sample_rate / fps
    out = np.zeros(n_frames)
    for i in range(n_frames):
        seg = wave[int(round(i * hop)):int(round((i + 1) * hop))]
        out[i] = float(np.sqrt(np.mean(seg ** 2))) if len(seg) else 0.0
    return out


def _wave_envelope(wave: np.ndarray, sample_rate: int) -> tuple:
    """(t [B], lo [B], hi [B]) min/max per bin of a long waveform."""
    n = len(wave)
    bins = min(WAVE_BINS, max(1, n))
    edges = np.linspace(0, n, bins + 1).astype(int)
    lo = np.array([wave[a:b].min() if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])
    hi = np.array([wave[a:b].max() if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])
    return (edges[:-1] + edges[1:]) / 2 / sample_rate, lo, hi


def render_preview(wave: np.ndarray, frames: np.ndarray, out_png, mesh=None, n_faces: int = 8,
                   title: Optional[str] = None, *, sample_rate: int = SAMPLE_RATE,
                   fps: float = FLAME_FPS, pick: str = "speech",
                   size: Tuple[int, int] = DEFAULT_SIZE,
                   layout: FlameLayout = DEFAULT_LAYOUT,
                   listening: Optional[np.ndarray] = None) -> PreviewInfo:
    """Write the preview PNG for audio ``wave`` [N] and FLAME ``frames`` [T, layout.dim].

    ``mesh``: a :class:`~a2llm_ros.flame.mesh.FlameMesh` (default: the generated
    head).  ``size`` is the exact PNG size in pixels.  ``listening`` [T]: frames
    of the listening face (never counted as speech; default: the silent ones).
    Returns a :class:`PreviewInfo`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from a2llm_ros.flame.mesh import FlameMesh
    from a2llm_ros.tools.render.raster import FaceRenderer, view_bounds

    wave = np.asarray(wave, np.float64).reshape(-1)  # [N]
    frames = np.asarray(frames, np.float64)  # [T, D]
    if frames.ndim != 2 or len(frames) == 0:
        raise ValueError(f"frames must be [T>0, {layout.dim}], got {frames.shape}")
    mesh = mesh or FlameMesh(layout=layout)
    jaw_pitch = frames[:, layout.jaw][:, 0]  # [T]
    lip_gap = mesh.mouth_opening(mesh.vertices(frames, with_head=False)) * MM  # [T]
    rms = frame_rms(wave, len(frames), sample_rate, fps)  # [T]
    speech = speech_frames(rms, listening)  # [T]
    if pick == "speech":
        chosen, labels = pick_speech_frames(lip_gap, speech, n_faces, listening)
    else:
        chosen = pick_frames(lip_gap, n_faces, pick)
        labels = tuple("speech" if speech[i] else LISTENING_LABEL for i in chosen)
    times = chosen / fps

    width, height = size
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    strip_rect, wave_rect, jaw_rect = _layout(width, height, len(chosen))
    face_axes = [fig.add_axes(rect) for rect in strip_rect]
    ax_wave = fig.add_axes(wave_rect)
    ax_jaw = fig.add_axes(jaw_rect, sharex=ax_wave)

    verts = mesh.vertices(frames[chosen], with_head=True)  # [n, V, 3]
    cell_px = strip_rect[0][3] * height
    renderer = FaceRenderer(mesh, max(MIN_RENDER_PX, int(cell_px)), view_bounds(mesh, verts),
                            supersample=FACE_SUPERSAMPLE)
    eyes = renderer.eye_open(verts)  # [n, 2]
    for k, ax in enumerate(face_axes):
        ax.imshow(renderer.render(verts[k], eyes[k]), interpolation="antialiased")
        ax.set_xticks([])
        ax.set_yticks([])
        note = f"  ({labels[k]})" if labels[k] == LISTENING_LABEL else ""
        ax.set_title(f"#{k + 1}  {times[k]:.2f} s{note}", fontsize=9)

    _draw_wave(ax_wave, wave, rms, sample_rate, fps)
    _draw_jaw(ax_jaw, jaw_pitch, lip_gap, fps)
    duration = max(len(wave) / sample_rate, len(frames) / fps)
    ax_wave.set_xlim(0.0, duration)
    for k, t in enumerate(times):
        for ax in (ax_wave, ax_jaw):
            ax.axvline(t, color=MARK_COLOR, lw=0.8, ls="--", zorder=0)
        ax_wave.annotate(f"#{k + 1}", (t, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(0, 2), textcoords="offset points", ha="center",
                         va="bottom", fontsize=8, color=MARK_COLOR)
    fig.suptitle(title or f"A\u00b2-LLM answer: {len(wave) / sample_rate:.2f} s audio, "
                 f"{len(frames)} FLAME frames at {fps:g} fps", fontsize=12)

    canvas.draw()
    box = _strip_box(face_axes, height)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=DPI, facecolor="white")
    return PreviewInfo(out_png, (width, height), chosen, times, labels, speech, box, jaw_pitch,
                       lip_gap, rms)


def _layout(width: int, height: int, n: int) -> tuple:
    """Axes rectangles (figure fractions): n square face cells, then the wave and jaw panels."""
    left, right = LEFT_PX / width, 1.0 - RIGHT_PX / width
    gap = FACE_GAP_PX / width
    cell_w = (right - left - gap * (n - 1)) / n
    cell_px = min(cell_w * width, MAX_FACE_FRAC * height)
    cell_w, cell_h = cell_px / width, cell_px / height
    x0 = left + (right - left - n * cell_w - (n - 1) * gap) / 2  # centre the strip
    top = 1.0 - TOP_PX / height
    faces = [(x0 + k * (cell_w + gap), top - cell_h, cell_w, cell_h) for k in range(n)]
    bottom, panel_gap = BOTTOM_PX / height, PANEL_GAP_PX / height
    lower_top = top - cell_h - STRIP_GAP_PX / height
    panel_h = (lower_top - bottom - panel_gap) / 2
    wave = (left, bottom + panel_h + panel_gap, right - left, panel_h)
    jaw = (left, bottom, right - left, panel_h)
    return faces, wave, jaw


def _draw_wave(ax, wave: np.ndarray, rms: np.ndarray, sample_rate: int, fps: float) -> None:
    t, lo, hi = _wave_envelope(wave, sample_rate)
    ax.fill_between(t, lo, hi, color="0.55", lw=0, label="waveform")
    ax.plot((np.arange(len(rms)) + 0.5) / fps, rms, color="black", lw=1.2,
            label="RMS per frame")
    peak = max(float(np.abs(wave).max()) if len(wave) else 0.0, 1e-6)
    ax.set_ylim(-1.1 * peak, 1.1 * peak)
    ax.set_ylabel("audio")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.tick_params(labelbottom=False)


def _draw_jaw(ax, jaw_pitch: np.ndarray, lip_gap: np.ndarray, fps: float) -> None:
    t = np.arange(len(jaw_pitch)) / fps
    ax.plot(t, jaw_pitch, color=JAW_COLOR, lw=1.4, label="jaw pitch (rad)")
    ax.set_ylabel("jaw pitch (rad)", color=JAW_COLOR)
    ax.set_xlabel("time (s)")
    right = ax.twinx()
    right.plot(t, lip_gap, color=GAP_COLOR, lw=1.2, label="lip gap (mm)")
    right.set_ylabel("inner-lip gap (mm)", color=GAP_COLOR)
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right", fontsize=8,
              frameon=False)


def _strip_box(face_axes, height: int) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel rows/columns covering the face axes."""
    boxes = [ax.get_window_extent() for ax in face_axes]
    left = min(b.x0 for b in boxes)
    right = max(b.x1 for b in boxes)
    bottom = min(b.y0 for b in boxes)
    top = max(b.y1 for b in boxes)
    return (int(round(height - top)), int(round(height - bottom)), int(round(left)),
            int(round(right)))
