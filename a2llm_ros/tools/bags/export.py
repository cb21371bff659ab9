"""Export bag topics to plain files: audio -> WAV, FLAME -> NPZ.

Audio (:func:`export_audio`): ros-drivers ``AudioData``/``AudioDataStamped``
bytes are decoded with the latest ``AudioInfo`` seen in the bag (its own
topic, latched); mgonzs13 ``AudioStamped`` carries its info and typed arrays
in every message.  Runs of one rate/channel count are resampled (polyphase)
to the output rate, channels are down/up-mixed, and the WAV is written as
16-bit PCM (``round(x * 32768)``, clipped).  Messages that cannot be used are
skipped and counted by reason (:data:`SKIP_REASONS`); header stamps that go
backwards are kept but counted as warnings.

FLAME (:func:`export_flame`): ``FlameChunk`` or ``FlameFrame`` messages ->
``frames`` [T, D] in :class:`~a2llm_ros.flame.layout.FlameLayout` order
(expression, jaw, head rotation, eyelids; D = 58 for 50 expressions),
``stamps_ns`` [T], ``turn_ids`` [T], ``sources`` [T] (-1 for bare frames),
``flame_version`` [T] and ``fps``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Dict, List, Optional, Tuple

import numpy as np

from a2llm_ros.audio import frontend
from a2llm_ros.tools.bags import types as T
from a2llm_ros.tools.bags.io import PathLike, read_bag
from a2llm_ros.constants import NS_PER_S

#: sample_format -> (numpy dtype, full-scale divisor, offset); S24LE handled apart.
PCM_FORMATS = {"S16LE": ("<i2", 32768.0, 0.0), "S32LE": ("<i4", 2147483648.0, 0.0),
               "F32LE": ("<f4", 1.0, 0.0), "F64LE": ("<f8", 1.0, 0.0),
               "S8": ("i1", 128.0, 0.0), "U8": ("u1", 128.0, 128.0),
               "S24LE": (None, 8388608.0, 0.0)}
S24_BYTES = 3
RAW_CODINGS = ("wave", "wav", "raw", "pcm", "")
#: mgonzs13 integer format -> full-scale divisor and offset.
MG_SCALE = {T.MG_FORMAT_F32: (1.0, 0.0), T.MG_FORMAT_I32: (2147483648.0, 0.0),
            T.MG_FORMAT_I16: (32768.0, 0.0), T.MG_FORMAT_I8: (128.0, 0.0),
            T.MG_FORMAT_U8: (128.0, 128.0)}
INT16_SCALE = 32768.0
DEFAULT_MAX_CHUNK_SECONDS = 1.0
SKIP_REASONS = ("no_audio_info", "unsupported_coding", "unsupported_format", "bad_info",
                "empty", "bad_length", "non_finite", "oversize", "undecodable")
AUDIO_TYPES = (T.AUDIO_DATA, T.AUDIO_DATA_STAMPED, T.AUDIO_STAMPED)


class SkipMessage(Exception):
    """A message the exporter cannot use; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------- PCM codec

def encode_pcm(audio: np.ndarray, sample_format: str) -> bytes:
    """Interleave float ``audio`` [N, C] (or [N]) in [-1, 1] to raw bytes of ``sample_format``."""
    data = np.asarray(audio, dtype=np.float64).reshape(len(audio), -1)  # [N, C]
    dtype, scale, offset = PCM_FORMATS[sample_format]
    if scale == 1.0:
        return data.astype(dtype).tobytes()
    ints = np.clip(np.round(data * scale + offset), offset - scale, offset + scale - 1)
    if dtype is None:  # S24LE: low three bytes of little-endian int32
        raw = ints.astype("<i4").reshape(-1, 1).view(np.uint8)[:, :S24_BYTES]
        return raw.tobytes()
    return ints.astype(dtype).tobytes()


#: AudioFormatError reasons of the node front-end -> the exporter's skip reasons.
_FRONTEND_REASONS = {"unsupported_coding": "unsupported_coding",
                     "unsupported_sample_format": "unsupported_format",
                     "invalid_format": "bad_info", "odd_byte_count": "bad_length",
                     "empty": "empty", "non_finite": "non_finite", "oversized": "oversize"}


def decode_pcm(raw, sample_format: str, channels: int) -> np.ndarray:
    """Raw interleaved bytes -> float32 [N, channels]; raises :class:`SkipMessage`.

    The formats the node accepts go through the node's own decoder
    (:func:`a2llm_ros.audio.frontend.decode_pcm`), so bag export and live input
    agree sample for sample; S24LE and F64LE, which only appear in recorded
    files, are decoded here.
    """
    if sample_format not in PCM_FORMATS:
        raise SkipMessage("unsupported_format", sample_format)
    if channels < 1:
        raise SkipMessage("bad_info", f"channels={channels}")
    buf = _as_bytes(raw)
    if sample_format in frontend.SAMPLE_FORMATS:
        fmt = frontend.AudioFormat(channels=channels, sample_rate=1,
                                   sample_format=sample_format)
        try:
            return frontend.decode_pcm(buf.tobytes(), fmt, max_seconds=float("inf"),
                                       max_bytes=1 << 62)
        except frontend.AudioFormatError as exc:
            raise SkipMessage(_FRONTEND_REASONS[exc.reason], str(exc)) from exc
    dtype, scale, offset = PCM_FORMATS[sample_format]
    width = S24_BYTES if dtype is None else np.dtype(dtype).itemsize
    if buf.size == 0:
        raise SkipMessage("empty")
    if buf.size % (width * channels):
        raise SkipMessage("bad_length", f"{buf.size} bytes, frame is {width * channels}")
    if dtype is None:
        values = _s24_to_int(buf)
    else:
        values = buf.view(dtype).astype(np.float64)
    return ((values - offset) / scale).astype(np.float32).reshape(-1, channels)  # [N, C]


def _as_bytes(raw) -> np.ndarray:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return np.frombuffer(raw, dtype=np.uint8)
    return np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)


def _s24_to_int(buf: np.ndarray) -> np.ndarray:
    trip = buf.reshape(-1, S24_BYTES).astype(np.int32)
    values = trip[:, 0] | (trip[:, 1] << 8) | (trip[:, 2] << 16)
    return np.where(values >= 1 << 23, values - (1 << 24), values).astype(np.float64)


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Float [-1, 1] -> int16 with the exporter's quantisation (round(x * 32768), clipped)."""
    return np.clip(np.round(np.asarray(audio, np.float64) * INT16_SCALE),
                   -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)


# ----------------------------------------------------------------------------- decoding

def decode_ros_drivers(data, info) -> Tuple[np.ndarray, int]:
    """AudioData bytes + ros-drivers AudioInfo -> (float32 [N, C], rate)."""
    if info is None:
        raise SkipMessage("no_audio_info")
    coding = (info.coding_format or "").strip().lower()
    if coding not in RAW_CODINGS:
        raise SkipMessage("unsupported_coding", coding)
    if info.sample_rate <= 0:
        raise SkipMessage("bad_info", f"sample_rate={info.sample_rate}")
    fmt = (info.sample_format or "").strip().upper()
    return decode_pcm(data, fmt, int(info.channels)), int(info.sample_rate)


def decode_mgonzs13(audio) -> Tuple[np.ndarray, int]:
    """mgonzs13 ``Audio`` (typed arrays + info) -> (float32 [N, C], rate)."""
    info = audio.info
    if info.format not in T.MG_FORMAT_FIELDS:
        raise SkipMessage("unsupported_format", f"format={info.format}")
    if info.channels < 1 or info.rate <= 0:
        raise SkipMessage("bad_info", f"channels={info.channels} rate={info.rate}")
    values = np.asarray(getattr(audio.audio_data, T.MG_FORMAT_FIELDS[info.format]))
    if values.size == 0:
        raise SkipMessage("empty")
    if values.size % info.channels:
        raise SkipMessage("bad_length", f"{values.size} samples, {info.channels} channels")
    scale, offset = MG_SCALE[info.format]
    out = (values.astype(np.float64) - offset) / scale
    return out.astype(np.float32).reshape(-1, info.channels), int(info.rate)


def decode_audio_message(msgtype: str, msg, info) -> Tuple[np.ndarray, int]:
    """Any supported audio message -> (float32 [N, C], rate); raises :class:`SkipMessage`."""
    if msgtype == T.AUDIO_STAMPED:
        return decode_mgonzs13(msg.audio)
    if msgtype == T.AUDIO_DATA_STAMPED:
        return decode_ros_drivers(msg.audio.data, info)
    if msgtype == T.AUDIO_DATA:
        return decode_ros_drivers(msg.data, info)
    raise SkipMessage("undecodable", msgtype)


def _check_chunk(samples: np.ndarray, rate: int, max_chunk_s: float) -> None:
    if samples.shape[0] > max_chunk_s * rate:
        raise SkipMessage("oversize", f"{samples.shape[0] / rate:.2f} s in one message")
    if not np.isfinite(samples).all():
        raise SkipMessage("non_finite")


# ----------------------------------------------------------------------------- audio export

@dataclass
class AudioExportReport:
    """What :func:`export_audio` wrote and what it skipped."""

    out_path: str
    sample_rate: int = 0
    channels: int = 0
    n_frames: int = 0
    n_messages: int = 0
    n_used: int = 0
    skipped: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)
    events: List[Tuple[int, str]] = field(default_factory=list)  # (bag ns, reason)

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.sample_rate if self.sample_rate else 0.0

    def to_dict(self) -> dict:
        return {"out_path": self.out_path, "sample_rate": self.sample_rate,
                "channels": self.channels, "n_frames": self.n_frames,
                "duration_s": self.duration_s, "n_messages": self.n_messages,
                "n_used": self.n_used, "skipped": dict(self.skipped),
                "warnings": dict(self.warnings)}


def find_info_topic(bag: PathLike, audio_topic: str) -> Optional[str]:
    """The AudioInfo topic next to ``audio_topic`` (same namespace first), or None."""
    from a2llm_ros.tools.bags.io import bag_summary

    infos = [t for t, e in bag_summary(bag)["topics"].items() if e["type"] == T.AUDIO_INFO]
    sibling = audio_topic.rsplit("/", 1)[0] + "/audio_info"
    if sibling in infos:
        return sibling
    return infos[0] if infos else None


class _AudioCollector:
    """Accumulates decoded runs of equal (rate, channels)."""

    def __init__(self, report: AudioExportReport, max_chunk_s: float):
        self.report = report
        self.max_chunk_s = max_chunk_s
        self.info = None
        self.runs: List[Tuple[int, List[np.ndarray]]] = []  # (rate, chunks [N, C])
        self.last_stamp: Optional[int] = None

    def add(self, msgtype: str, msg, bag_ns: int) -> None:
        self.report.n_messages += 1
        try:
            samples, rate = decode_audio_message(msgtype, msg, self.info)
            _check_chunk(samples, rate, self.max_chunk_s)
        except SkipMessage as skip:
            self.skip(bag_ns, skip.reason)
            return
        self._check_stamp(msg)
        self.report.n_used += 1
        key = (rate, samples.shape[1])
        if not self.runs or self.runs[-1][0] != key:
            self.runs.append((key, []))
        self.runs[-1][1].append(samples)

    def skip(self, bag_ns: int, reason: str) -> None:
        self.report.skipped[reason] += 1
        self.report.events.append((int(bag_ns), reason))

    def _check_stamp(self, msg) -> None:
        header = getattr(msg, "header", None)
        if header is None:
            return
        stamp = header.stamp.sec * NS_PER_S + header.stamp.nanosec
        if self.last_stamp is not None and stamp < self.last_stamp:
            self.report.warnings["stamp_backwards"] += 1
        self.last_stamp = stamp


def _convert_run(chunks: List[np.ndarray], rate: int, out_rate: int,
                 out_channels: int) -> np.ndarray:
    audio = np.concatenate(chunks, axis=0)  # [N, C]
    if audio.shape[1] != out_channels:
        mono = audio.mean(axis=1, keepdims=True)  # [N, 1]
        audio = mono if out_channels == 1 else np.repeat(mono, out_channels, axis=1)
    if rate != out_rate:
        from scipy.signal import resample_poly

        ratio = Fraction(out_rate, rate)
        audio = resample_poly(audio, ratio.numerator, ratio.denominator, axis=0)
    return audio.astype(np.float32)


def collect_audio(bag: PathLike, topic: str, info_topic: Optional[str] = None,
                  max_chunk_s: float = DEFAULT_MAX_CHUNK_SECONDS,
                  report: Optional[AudioExportReport] = None):
    """Decode ``topic`` -> (list of ((rate, channels), chunks), report)."""
    report = report or AudioExportReport(out_path="")
    info_topic = info_topic or find_info_topic(bag, topic)
    coll = _AudioCollector(report, max_chunk_s)
    topics = [topic] + ([info_topic] if info_topic else [])
    for name, msgtype, stamp, msg in read_bag(
            bag, topics=topics, on_error=lambda t, s, e: coll.skip(s, "undecodable")):
        if name == info_topic and msgtype == T.AUDIO_INFO:
            coll.info = msg
        elif msgtype in AUDIO_TYPES:
            coll.add(msgtype, msg, stamp)
        else:
            coll.skip(stamp, "undecodable")
    return coll.runs, report


def export_audio(bag: PathLike, topic: str, out: PathLike, info_topic: Optional[str] = None,
                 sample_rate: Optional[int] = None, channels: Optional[int] = None,
                 max_chunk_s: float = DEFAULT_MAX_CHUNK_SECONDS) -> AudioExportReport:
    """Write ``topic`` of ``bag`` to a 16-bit WAV at ``out``.

    Output rate/channels default to those of the first usable message.
    Raises ValueError when no message could be used.
    """
    import soundfile

    report = AudioExportReport(out_path=str(out))
    runs, report = collect_audio(bag, topic, info_topic, max_chunk_s, report)
    if not runs:
        raise ValueError(f"{bag}: no usable audio on {topic} (skipped: {dict(report.skipped)})")
    out_rate = int(sample_rate or runs[0][0][0])
    out_channels = int(channels or runs[0][0][1])
    audio = np.concatenate([_convert_run(chunks, rate, out_rate, out_channels)
                            for (rate, _), chunks in runs], axis=0)  # [N, C]
    pcm = to_int16(audio)
    soundfile.write(str(out), pcm, out_rate, subtype="PCM_16")
    report.sample_rate, report.channels, report.n_frames = out_rate, out_channels, len(pcm)
    return report


# ----------------------------------------------------------------------------- FLAME export

@dataclass
class FlameExportReport:
    """What :func:`export_flame` wrote and what it skipped."""

    out_path: str
    n_frames: int = 0
    n_messages: int = 0
    dim: int = 0
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"out_path": self.out_path, "n_frames": self.n_frames, "dim": self.dim,
                "n_messages": self.n_messages, "skipped": dict(self.skipped)}


def frame_vector(frame) -> np.ndarray:
    """One FlameFrame -> [D] in FlameLayout order."""
    from a2llm_ros.flame.layout import FlameLayout

    layout = FlameLayout(n_expr=len(frame.expression))
    return layout.join(np.asarray(frame.expression, np.float32),
                       np.asarray(frame.jaw_pose, np.float32),
                       np.asarray(frame.head_rotation, np.float32),
                       np.asarray(frame.eyelids, np.float32))


def _frames_of(msgtype: str, msg) -> List[Tuple[object, int, int]]:
    """(frame, stamp_ns, source) for every frame of a FlameChunk/FlameFrame."""
    if msgtype == T.FLAME_FRAME:
        return [(msg, _stamp_ns(msg.header), -1)]
    base = _stamp_ns(msg.header)
    rate = float(msg.frame_rate) or 25.0
    out = []
    for i, frame in enumerate(msg.frames):
        own = _stamp_ns(frame.header)
        stamp = own if own else base + int(round(i * NS_PER_S / rate))
        out.append((frame, stamp, int(msg.source)))
    return out


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * NS_PER_S + int(header.stamp.nanosec)


def collect_flame(bag: PathLike, topic: str, report: FlameExportReport) -> Dict[str, list]:
    """Read every frame of ``topic``; frames of another width or non-finite are skipped."""
    cols: Dict[str, list] = {"frames": [], "stamps_ns": [], "turn_ids": [], "sources": [],
                             "flame_version": [], "fps": []}
    for _, msgtype, stamp, msg in read_bag(
            bag, topics=[topic], on_error=lambda t, s, e: report.skipped.update(["undecodable"])):
        report.n_messages += 1
        if msgtype not in (T.FLAME_FRAME, T.FLAME_CHUNK):
            report.skipped["undecodable"] += 1
            continue
        fps = float(getattr(msg, "frame_rate", 0.0))
        for frame, stamp_ns, source in _frames_of(msgtype, msg):
            vec = frame_vector(frame)
            if cols["frames"] and vec.shape != cols["frames"][0].shape:
                report.skipped["bad_length"] += 1
                continue
            if not np.isfinite(vec).all():
                report.skipped["non_finite"] += 1
                continue
            for key, value in (("frames", vec), ("stamps_ns", stamp_ns),
                               ("turn_ids", frame.turn_id), ("sources", source),
                               ("flame_version", frame.flame_version), ("fps", fps)):
                cols[key].append(value)
    return cols


def export_flame(bag: PathLike, topic: str, out: PathLike) -> FlameExportReport:
    """Write the FLAME frames of ``topic`` to an NPZ at ``out`` (keys in module docstring)."""
    from a2llm_ros.constants import FLAME_FPS

    report = FlameExportReport(out_path=str(out))
    cols = collect_flame(bag, topic, report)
    if not cols["frames"]:
        raise ValueError(f"{bag}: no FLAME frames on {topic}")
    frames = np.stack(cols["frames"]).astype(np.float32)  # [T, D]
    fps_values = [f for f in cols["fps"] if f > 0]
    np.savez(str(out), frames=frames,
             stamps_ns=np.asarray(cols["stamps_ns"], np.int64),
             turn_ids=np.asarray(cols["turn_ids"], np.uint32),
             sources=np.asarray(cols["sources"], np.int16),
             flame_version=np.asarray(cols["flame_version"], np.uint16),
             fps=np.float32(fps_values[0] if fps_values else FLAME_FPS))
    report.n_frames, report.dim = frames.shape
    return report
