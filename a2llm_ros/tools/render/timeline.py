"""FLAME frames and speech audio on one timeline, for videos.

A :class:`Clip` holds the audio (mono [N] at ``sample_rate``, sample 0 at
``audio_t0_ns``) and the FLAME frames [T, D] with their stamps.  Video frame
``k`` (at ``fps``) shows the FLAME frame whose stamp is nearest to the stamp of
audio sample ``k * sample_rate / fps`` (:meth:`Clip.frame_indices`); a clip of
``N`` samples has ``ceil(N * fps / sample_rate)`` video frames.

Sources:

* :func:`load_pair` -- a ``flame.npz`` (``frames`` [T, D]; optional
  ``stamps_ns`` [T] and ``audio_t0_ns``, as ``a2llm demo`` and ``a2llm bag
  export`` write them) and a WAV.  Without stamps the frames are taken as
  ``fps`` frames from audio sample 0; with stamps but no ``audio_t0_ns`` the
  first frame's stamp is the audio's start.
* :func:`load_bag` -- a recorded bag: the FLAME topic (``FlameChunk`` or
  ``FlameFrame``) and the speech topic (``AudioDataStamped``/``AudioStamped``,
  each chunk placed at its header stamp, silence between answers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from a2llm_ros.constants import FLAME_FPS, NS_PER_S
from a2llm_ros.flame.layout import N_EYELIDS, N_HEAD, N_JAW, FlameLayout

#: Default topics of a recorded graph (``a2llm demo``'s ``graph_bag``).
SPEECH_HINT = "speech"
FLAME_TYPES = ("a2llm_ros/msg/FlameChunk", "a2llm_ros/msg/FlameFrame")


@dataclass
class Clip:
    """Audio [N] and FLAME frames [T, D] on one timeline (see module docstring)."""

    wave: np.ndarray  # [N] float32 mono
    sample_rate: int
    frames: np.ndarray  # [T, D]
    stamps_ns: Optional[np.ndarray] = None  # [T] int64, None: frame k at sample k * sr / fps
    audio_t0_ns: int = 0  # stamp of audio sample 0
    fps: float = FLAME_FPS

    @property
    def n_video_frames(self) -> int:
        """ceil(N * fps / sample_rate): video frames covering the audio (at least one)."""
        return max(1, int(np.ceil(len(self.wave) * self.fps / self.sample_rate - 1e-9)))

    @property
    def duration_s(self) -> float:
        return len(self.wave) / self.sample_rate

    def frame_times_ns(self) -> np.ndarray:
        """Stamp [K] of audio sample ``k * sample_rate / fps`` for each video frame k."""
        k = np.arange(self.n_video_frames)
        return self.audio_t0_ns + np.round(k * NS_PER_S / self.fps).astype(np.int64)

    def frame_indices(self) -> np.ndarray:
        """FLAME frame index [K] shown by each video frame (nearest stamp)."""
        if self.stamps_ns is None:
            return np.minimum(np.arange(self.n_video_frames), len(self.frames) - 1)
        stamps = np.asarray(self.stamps_ns, np.int64)
        times = self.frame_times_ns()
        right = np.clip(np.searchsorted(stamps, times), 1, len(stamps) - 1)  # [K]
        left = right - 1
        nearer_left = np.abs(times - stamps[left]) <= np.abs(stamps[right] - times)
        idx = np.where(nearer_left, left, right)
        return idx if len(stamps) > 1 else np.zeros_like(idx)

    @property
    def layout(self) -> FlameLayout:
        """The :class:`FlameLayout` of frames of this width (58: 50 expressions)."""
        return layout_for(self.frames.shape[1])

    def video_frames(self) -> np.ndarray:
        """FLAME frames [K, D] of the video, one per video frame."""
        return np.asarray(self.frames)[self.frame_indices()]


def layout_for(dim: int) -> FlameLayout:
    """The frame layout of ``dim``-wide FLAME frames (expression count = dim - 8)."""
    return FlameLayout(n_expr=int(dim) - (N_JAW + N_HEAD + N_EYELIDS))


def _mono(wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave, np.float32)
    return wave.mean(axis=1) if wave.ndim == 2 else wave  # [N]


def load_pair(flame_npz, audio_wav) -> Clip:
    """A ``flame.npz`` + WAV pair as a :class:`Clip` (alignment in the module docstring)."""
    import soundfile

    data = np.load(str(flame_npz))
    if "frames" not in data:
        raise ValueError(f"{flame_npz}: no 'frames' array (keys: {sorted(data.keys())})")
    frames = np.asarray(data["frames"], np.float32)  # [T, D]
    if frames.ndim != 2 or not len(frames):
        raise ValueError(f"{flame_npz}: frames must be [T > 0, D], got {frames.shape}")
    wave, rate = soundfile.read(str(audio_wav), dtype="float32")
    fps = float(data["fps"]) if "fps" in data else float(FLAME_FPS)
    stamps = np.asarray(data["stamps_ns"], np.int64) if "stamps_ns" in data else None
    if stamps is not None and len(stamps) != len(frames):
        raise ValueError(f"{flame_npz}: {len(stamps)} stamps for {len(frames)} frames")
    if stamps is None:
        t0 = 0
    elif "audio_t0_ns" in data:
        t0 = int(data["audio_t0_ns"])
    else:
        t0 = int(stamps[0])
    return Clip(_mono(wave), int(rate), frames, stamps, t0, fps)


def _find_topic(summary: dict, types, hint: str = "") -> str:
    """The topic of one of ``types`` (one whose name contains ``hint`` first)."""
    topics = [t for t, e in sorted(summary["topics"].items()) if e["type"] in types]
    preferred = [t for t in topics if hint and hint in t]
    if not topics:
        raise ValueError(f"{summary['path']}: no topic of type {' / '.join(types)}")
    return (preferred or topics)[0]


def load_bag(bag, flame_topic: Optional[str] = None, audio_topic: Optional[str] = None,
             info_topic: Optional[str] = None) -> Clip:
    """The speech and FLAME streams of a recorded bag as a :class:`Clip`.

    Topics default to the bag's ``FlameChunk`` (else ``FlameFrame``) topic and its
    stamped audio topic whose name contains ``speech`` (the node's output).
    The audio spans its first chunk's stamp to the end of its last chunk.
    """
    from a2llm_ros.tools.bags import types as T
    from a2llm_ros.tools.bags.export import (FlameExportReport, SkipMessage, collect_flame,
                                             decode_audio_message, find_info_topic)
    from a2llm_ros.tools.bags.io import bag_summary, read_bag

    summary = bag_summary(bag)
    flame_topic = flame_topic or _find_topic(summary, FLAME_TYPES)
    audio_topic = audio_topic or _find_topic(
        summary, (T.AUDIO_DATA_STAMPED, T.AUDIO_STAMPED), SPEECH_HINT)
    info_topic = info_topic or find_info_topic(bag, audio_topic)
    cols = collect_flame(bag, flame_topic, FlameExportReport(out_path=""))
    if not cols["frames"]:
        raise ValueError(f"{bag}: no FLAME frames on {flame_topic}")
    order = np.argsort(np.asarray(cols["stamps_ns"], np.int64), kind="stable")
    frames = np.stack(cols["frames"]).astype(np.float32)[order]  # [T, D]
    stamps = np.asarray(cols["stamps_ns"], np.int64)[order]
    pieces, info, rate = [], None, None
    for name, msgtype, _, msg in read_bag(bag, topics=[audio_topic] + (
            [info_topic] if info_topic else [])):
        if name == info_topic and msgtype == T.AUDIO_INFO:
            info = msg
            continue
        try:
            samples, msg_rate = decode_audio_message(msgtype, msg, info)
        except SkipMessage:
            continue
        rate = rate or msg_rate
        if msg_rate == rate:
            stamp = int(msg.header.stamp.sec) * NS_PER_S + int(msg.header.stamp.nanosec)
            pieces.append((stamp, samples.mean(axis=1)))
    if not pieces:
        raise ValueError(f"{bag}: no usable audio on {audio_topic}")
    t0 = min(s for s, _ in pieces)
    end = max(s + len(a) * NS_PER_S // rate for s, a in pieces)
    wave = np.zeros(int(round((end - t0) * rate / NS_PER_S)), np.float32)  # [N]
    for stamp, audio in pieces:
        at = int(round((stamp - t0) * rate / NS_PER_S))
        wave[at:at + len(audio)] = audio[:max(0, len(wave) - at)]
    fps = next((f for f in cols["fps"] if f > 0), float(FLAME_FPS))
    return Clip(wave, int(rate), frames, stamps, t0, fps)
