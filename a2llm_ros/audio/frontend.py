"""Decoding and resampling of ROS audio messages to 16 kHz mono float32.

Two message families are understood (values are passed in as plain Python
values; this module never imports ROS):

* ros-drivers ``audio_common_msgs`` 0.4.x: ``AudioInfo`` gives ``channels``,
  ``sample_rate``, ``sample_format`` (``"S16LE"``, ``"F32LE"`` ...) and
  ``coding_format`` (``"wave"``, ``"mp3"`` ...); ``AudioData.data`` holds
  interleaved bytes.  Only PCM (``"wave"``/``"pcm"``/``"raw"``) is decoded;
  ``mp3`` and other codecs raise :class:`AudioFormatError` with reason
  ``unsupported_coding`` (the node warns and drops the message).
* mgonzs13 ``audio_common`` 4.x: ``AudioInfo.format`` is a PortAudio sample
  format code (1 float32, 2 int32, 8 int16, 16 int8, 32 uint8) and the samples
  come as one typed array (:func:`mgonzs13_field` names the field).

Framing: a ROS audio message holds whole frames (``channels *
bytes_per_sample`` bytes each).  A message that ends in a partial frame (a lost
or extra byte) loses only that partial frame: :class:`AudioFrontEnd` drops it,
counts the message as ``odd_byte_count`` and its bytes as
``partial_frame_bytes_dropped``, and the next message starts on a frame
boundary, so one bad message never shifts the samples of the ones after it.
Byte-stream publishers whose messages split frames on purpose can set
``FrontEndConfig.carry_partial_frames`` (ROS parameter
``audio.frontend.carry_partial_frames``): the partial frame is then carried into
the next message of the same format, as before.  Empty messages are counted
(``empty``) and skipped.  NaN/Inf float samples are set to zero and counted
(``non_finite`` messages, ``non_finite_samples_zeroed``); header stamps that jump
ahead of the previous message's end are counted (``stamp_gap``, ``stamp_gap_ms``).
:func:`decode_pcm` itself is stateless and raises on partial frames, empty input
and (unless told otherwise) non-finite samples.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import scipy.signal

from a2llm_ros.configbase import ConfigBase, above, at_least
from a2llm_ros.constants import NS_PER_S, SAMPLE_RATE

__all__ = ["AudioFormatError", "AudioFormat", "decode_pcm", "split_whole_frames",
           "mgonzs13_field", "downmix", "StreamingResampler", "FrontEndConfig",
           "AudioChunk", "AudioFrontEnd", "PCM_CODINGS", "SAMPLE_FORMATS",
           "KEPT_AUDIO_REASONS", "zero_non_finite", "stamp_gap_ns"]

#: Reason codes carried by :class:`AudioFormatError`.
REASONS = ("unsupported_coding", "unsupported_sample_format", "invalid_format",
           "odd_byte_count", "non_finite", "empty", "oversized")
#: Coding formats treated as raw interleaved PCM.
PCM_CODINGS = ("wave", "wav", "pcm", "raw", "")
#: sample_format -> (numpy little-endian dtype, scale to [-1, 1], offset).
SAMPLE_FORMATS = {
    "S16LE": ("<i2", 1.0 / 32768.0, 0.0),
    "S32LE": ("<i4", 1.0 / 2147483648.0, 0.0),
    "F32LE": ("<f4", 1.0, 0.0),
    "U8": ("u1", 1.0 / 128.0, -128.0),
    "S8": ("i1", 1.0 / 128.0, 0.0),
}
#: PortAudio sample format codes (mgonzs13 AudioInfo.format) -> sample_format.
PORTAUDIO_FORMATS = {1: "F32LE", 2: "S32LE", 8: "S16LE", 16: "S8", 32: "U8"}
#: PortAudio format code -> name of the typed-array field in mgonzs13 AudioData.
MGONZS13_FIELDS = {1: "float32_data", 2: "int32_data", 8: "int16_data",
                   16: "int8_data", 32: "uint8_data"}
#: A header stamp more than the message duration plus this tolerance after the previous
#: one counts as a ``stamp_gap``: at least ``STAMP_GAP_MIN_TOLERANCE_S`` ...
STAMP_GAP_MIN_TOLERANCE_S = 0.005
#: ... or this fraction of the message duration (stamp jitter of capture drivers).
STAMP_GAP_TOLERANCE_FRACTION = 0.5
#: :attr:`AudioFrontEnd.warnings` keys passed to ``on_problem`` (the audio was kept).
KEPT_AUDIO_REASONS = ("non_finite", "stamp_gap")
_ALIASES = {"S16": "S16LE", "INT16": "S16LE", "S32": "S32LE", "INT32": "S32LE",
            "F32": "F32LE", "FLOAT32": "F32LE", "UINT8": "U8", "INT8": "S8"}


class AudioFormatError(ValueError):
    """An audio message cannot be decoded; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown AudioFormatError reason {reason!r}")
        self.reason = reason
        super().__init__(f"[{reason}] {message}")


@dataclasses.dataclass(frozen=True)
class AudioFormat:
    """Stream description: interleaved ``channels`` at ``sample_rate`` Hz."""

    channels: int
    sample_rate: int
    sample_format: str = "S16LE"
    coding_format: str = "wave"

    @classmethod
    def from_ros_drivers(cls, channels: int, sample_rate: int, sample_format: str,
                         coding_format: str) -> "AudioFormat":
        """From ros-drivers ``audio_common_msgs/AudioInfo`` fields."""
        fmt = str(sample_format).strip().upper()
        return cls(int(channels), int(sample_rate), _ALIASES.get(fmt, fmt),
                   str(coding_format).strip().lower())

    @classmethod
    def from_mgonzs13(cls, format: int, channels: int, rate: int) -> "AudioFormat":
        """From mgonzs13 ``audio_common_msgs/AudioInfo`` (PortAudio format code)."""
        if int(format) not in PORTAUDIO_FORMATS:
            raise AudioFormatError("unsupported_sample_format",
                                   f"PortAudio format code {format} is not supported "
                                   f"(known: {sorted(PORTAUDIO_FORMATS)})")
        return cls(int(channels), int(rate), PORTAUDIO_FORMATS[int(format)], "pcm")

    @property
    def bytes_per_sample(self) -> int:
        return np.dtype(SAMPLE_FORMATS[self.sample_format][0]).itemsize

    @property
    def frame_bytes(self) -> int:
        """Bytes of one interleaved frame (all channels)."""
        return self.bytes_per_sample * self.channels

    def validate(self) -> None:
        """Raise :class:`AudioFormatError` if this format cannot be decoded."""
        if self.coding_format not in PCM_CODINGS:
            raise AudioFormatError("unsupported_coding",
                                   f"coding_format {self.coding_format!r} is not PCM; "
                                   "set the capture node to 'wave'")
        if self.sample_format not in SAMPLE_FORMATS:
            raise AudioFormatError("unsupported_sample_format",
                                   f"sample_format {self.sample_format!r} not in "
                                   f"{sorted(SAMPLE_FORMATS)}")
        if self.channels < 1 or self.sample_rate <= 0:
            raise AudioFormatError("invalid_format",
                                   f"channels={self.channels}, "
                                   f"sample_rate={self.sample_rate}")


def mgonzs13_field(format: int) -> str:
    """Name of the mgonzs13 ``AudioData`` field holding samples of ``format``."""
    if int(format) not in MGONZS13_FIELDS:
        raise AudioFormatError("unsupported_sample_format",
                               f"PortAudio format code {format} is not supported")
    return MGONZS13_FIELDS[int(format)]


def _as_bytes(data: Union[bytes, bytearray, memoryview, np.ndarray, list],
              fmt: AudioFormat) -> bytes:
    """Message data -> little-endian bytes of ``fmt``'s sample dtype.

    ``bytes``-like data and uint8 arrays (ros-drivers ``uint8[] data``, e.g. an
    ``array.array('B')``) are taken as raw bytes; other arrays (mgonzs13 typed
    fields such as ``int16_data``) are cast to the sample dtype.  Plain lists of
    ints are cast too, so pass ros-drivers data as bytes/uint8 arrays.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    dtype = SAMPLE_FORMATS[fmt.sample_format][0]
    arr = np.asarray(data)
    if arr.dtype == np.uint8 and np.dtype(dtype).itemsize > 1:
        return arr.tobytes()  # raw bytes (e.g. ros-drivers uint8[] as array)
    return arr.astype(dtype, copy=False).tobytes()


def split_whole_frames(data: bytes, fmt: AudioFormat) -> Tuple[bytes, bytes]:
    """Split ``data`` into (whole frames, trailing partial-frame bytes)."""
    n_whole = len(data) - len(data) % fmt.frame_bytes
    return data[:n_whole], data[n_whole:]


def decode_pcm(data, fmt: AudioFormat, max_seconds: float = 10.0,
               max_bytes: int = 8 << 20, allow_non_finite: bool = False) -> np.ndarray:
    """Decode interleaved PCM to float32 ``[n_frames, channels]`` in [-1, 1].

    ``data`` is bytes or a typed array (mgonzs13 fields).  Raises
    :class:`AudioFormatError` for unsupported codings/formats, empty, partial
    frames (``odd_byte_count``), non-finite float samples (unless
    ``allow_non_finite``: they are returned as they are) and messages over
    ``max_seconds`` or ``max_bytes``.
    """
    fmt.validate()
    raw = _as_bytes(data, fmt)
    if not raw:
        raise AudioFormatError("empty", "message holds no samples")
    if len(raw) > max_bytes:
        raise AudioFormatError("oversized", f"{len(raw)} bytes > {max_bytes}")
    if len(raw) % fmt.frame_bytes:
        raise AudioFormatError("odd_byte_count",
                               f"{len(raw)} bytes is not a multiple of the frame size "
                               f"{fmt.frame_bytes}")
    n_frames = len(raw) // fmt.frame_bytes
    if n_frames > max_seconds * fmt.sample_rate:
        raise AudioFormatError("oversized", f"{n_frames / fmt.sample_rate:.2f} s > "
                               f"{max_seconds} s")
    dtype, scale, offset = SAMPLE_FORMATS[fmt.sample_format]
    samples = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    if (fmt.sample_format == "F32LE" and not allow_non_finite
            and not np.all(np.isfinite(samples))):
        raise AudioFormatError("non_finite", "NaN or Inf samples")
    samples = (samples + offset) * scale
    return samples.reshape(n_frames, fmt.channels)  # [n_frames, channels]


def zero_non_finite(frames: np.ndarray) -> int:
    """Set NaN/Inf values of ``frames`` to 0 in place; return how many there were."""
    bad = ~np.isfinite(frames)
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        frames[bad] = 0.0
    return n_bad


def downmix(frames: np.ndarray) -> np.ndarray:
    """Average ``[n, channels]`` to mono ``[n]`` float32."""
    if frames.ndim == 1:
        return frames.astype(np.float32, copy=False)
    return frames.mean(axis=1, dtype=np.float64).astype(np.float32)


class StreamingResampler:
    """Stateful polyphase FIR resampler: chunked output equals one-shot output.

    The filter is a Kaiser-windowed sinc like ``scipy.signal.resample_poly``
    (``10 * max(up, down)`` taps per side).  Output sample ``m`` is centred on
    input time ``m / to_rate``; producing it needs about ``10 * max(up, down) /
    up`` input samples of look-ahead (0.6 ms at 44.1 kHz), so the output lags the
    input by that much until :meth:`flush`.  Samples before the stream start
    count as zeros, as in ``resample_poly``.
    """

    def __init__(self, from_rate: int, to_rate: int = SAMPLE_RATE):
        if from_rate <= 0 or to_rate <= 0:
            raise ValueError(f"rates must be positive, got {from_rate} -> {to_rate}")
        ratio = Fraction(int(to_rate), int(from_rate))
        self.from_rate, self.to_rate = int(from_rate), int(to_rate)
        self.up, self.down = ratio.numerator, ratio.denominator
        self.passthrough = self.up == self.down == 1
        half = 10 * max(self.up, self.down)
        self.delay = half  # filter centre in the upsampled domain
        if self.passthrough:
            self.n_taps, self._branches = 1, np.ones((1, 1))
        else:
            taps = scipy.signal.firwin(2 * half + 1, 1.0 / max(self.up, self.down),
                                       window=("kaiser", 5.0)) * self.up
            self.n_taps = -(-len(taps) // self.up)  # taps per polyphase branch
            padded = np.zeros(self.n_taps * self.up)
            padded[:len(taps)] = taps
            # Branch p holds h[p + up * k]: [up, n_taps].
            self._branches = padded.reshape(self.n_taps, self.up).T.copy()
        self.reset()

    def reset(self) -> None:
        """Forget all history (next input is a new stream starting at zero)."""
        self._buf = np.zeros(self.n_taps, dtype=np.float64)  # history zeros
        self._buf_start = -self.n_taps  # absolute input index of _buf[0]
        self._n_in = 0
        self._n_out = 0

    @property
    def samples_in(self) -> int:
        return self._n_in

    @property
    def samples_out(self) -> int:
        return self._n_out

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed mono ``[n]`` input; return the output samples now computable."""
        samples = np.asarray(samples, dtype=np.float64).reshape(-1)
        if self.passthrough:
            self._n_in += len(samples)
            self._n_out += len(samples)
            return samples.astype(np.float32)
        self._buf = np.concatenate([self._buf, samples])
        self._n_in += len(samples)
        return self._emit(self._n_in - 1)

    def flush(self) -> np.ndarray:
        """Return the tail (zero look-ahead) so the output totals ceil(n*up/down)."""
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        total = -(-self._n_in * self.up // self.down)
        pad = self.delay // self.up + 2
        self._buf = np.concatenate([self._buf, np.zeros(pad)])
        out = self._emit(self._n_in - 1 + pad, limit=total)
        self._buf = self._buf[:len(self._buf) - pad]
        return out

    def _emit(self, last_index: int, limit: Optional[int] = None) -> np.ndarray:
        # Outputs m with highest input index (m*down + delay)//up <= last_index.
        n_max = (last_index * self.up + self.up - 1 - self.delay) // self.down + 1
        if limit is not None:
            n_max = min(n_max, limit)
        if n_max <= self._n_out:
            return np.zeros(0, dtype=np.float32)
        m = np.arange(self._n_out, n_max)
        t = m * self.down + self.delay
        hi = t // self.up - self._buf_start  # [n_out] buffer index of newest tap
        idx = hi[:, None] - np.arange(self.n_taps)[None, :]  # [n_out, n_taps]
        out = np.einsum("nk,nk->n", self._buf[idx], self._branches[t % self.up])
        self._n_out = int(n_max)
        self._trim()
        return out.astype(np.float32)

    def _trim(self) -> None:
        t_next = self._n_out * self.down + self.delay
        oldest = t_next // self.up - self.n_taps + 1  # oldest input still needed
        drop = max(0, oldest - self._buf_start)
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop


@dataclasses.dataclass
class FrontEndConfig(ConfigBase):
    """Limits and framing of the audio front-end."""

    #: Rate the microphone audio is resampled to (the model's input rate, Hz).
    target_rate: int = SAMPLE_RATE
    #: Messages longer than this many seconds are rejected (``oversized``).
    max_message_seconds: float = 10.0
    #: Messages larger than this many bytes are rejected (``oversized``).
    max_message_bytes: int = 8 << 20
    #: false: every message holds whole frames; a partial trailing frame is dropped
    #: (counted) and the next message starts aligned.  true: for byte-stream
    #: publishers that split frames across messages, carry it into the next message.
    carry_partial_frames: bool = False

    BOUNDS = {"target_rate": at_least(1), "max_message_seconds": above(0.0),
              "max_message_bytes": at_least(1)}


@dataclasses.dataclass
class AudioChunk:
    """16 kHz mono samples ``[n]`` starting at ``start_sample`` of the input clock."""

    samples: np.ndarray
    start_sample: int


def stamp_gap_ns(prev_stamp_ns: int, prev_duration_ns: int, stamp_ns: int,
                 duration_ns: int) -> int:
    """How far (ns) ``stamp_ns`` lies beyond the previous message's end, if beyond tolerance.

    The expected step is the longer of the two message durations (drivers stamp
    either the first or the last sample); the tolerance is the larger of
    :data:`STAMP_GAP_MIN_TOLERANCE_S` and :data:`STAMP_GAP_TOLERANCE_FRACTION` of
    it.  Returns 0 when the excess is within the tolerance (also for stamps going
    backwards, which the node counts itself).
    """
    step = max(prev_duration_ns, duration_ns)
    tolerance = max(int(STAMP_GAP_MIN_TOLERANCE_S * NS_PER_S),
                    int(STAMP_GAP_TOLERANCE_FRACTION * step))
    excess = stamp_ns - prev_stamp_ns - step
    return excess if excess > tolerance else 0


class AudioFrontEnd:
    """ROS audio messages -> continuous 16 kHz mono float32 with a sample clock.

    ``process(data, fmt, stamp_ns)`` returns an :class:`AudioChunk` (possibly
    empty) or ``None`` when the message was dropped.  ``start_sample`` counts
    output samples since construction/:meth:`reset` and is the input clock used
    by the conversation session.  A format change flushes the old resampler
    (its tail is part of the returned chunk), drops any partial-frame carry and
    starts a new resampler; it is counted as ``format_change``.

    Dropped audio is counted per reason in :attr:`counters` (``odd_byte_count``:
    messages that ended in a partial frame, ``empty``, ``oversized`` ...);
    audio that was kept but repaired or suspicious, and amounts, in
    :attr:`warnings` (``partial_frame_bytes_dropped``, ``non_finite``,
    ``non_finite_samples_zeroed``, ``stamp_gap``, ``stamp_gap_ms``).  Each
    event (not the amounts) is also passed to ``on_problem(reason, message)``;
    reasons in :data:`KEPT_AUDIO_REASONS` mean the audio was kept.
    """

    def __init__(self, config: Optional[FrontEndConfig] = None,
                 on_problem: Optional[Callable[[str, str], None]] = None):
        self.config = config or FrontEndConfig()
        self.on_problem = on_problem
        self.counters: Dict[str, int] = {}
        self.warnings: Dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        """Restart the clock and forget format, carry bytes, stamps and resampler."""
        self._format: Optional[AudioFormat] = None
        self._resampler: Optional[StreamingResampler] = None
        self._carry = b""
        self._last_stamp: Optional[Tuple[int, int]] = None  # (stamp ns, duration ns)
        self.sample_count = 0

    def _report(self, reason: str, message: str) -> None:
        """Count a dropped message (or part) under ``reason`` and tell ``on_problem``."""
        self.counters[reason] = self.counters.get(reason, 0) + 1
        if self.on_problem is not None:
            self.on_problem(reason, message)

    def _warn(self, reason: str, message: str, **amounts: int) -> None:
        """Count kept-audio event ``reason`` (plus ``amounts``) and tell ``on_problem``."""
        self._add(reason, 1)
        for name, value in amounts.items():
            self._add(name, value)
        if self.on_problem is not None:
            self.on_problem(reason, message)

    def _add(self, name: str, value: int) -> None:
        self.warnings[name] = self.warnings.get(name, 0) + int(value)

    def _switch_format(self, fmt: AudioFormat) -> np.ndarray:
        tail = np.zeros(0, dtype=np.float32)
        if self._format is not None:
            tail = self._resampler.flush()
            if self._carry:
                self._report("odd_byte_count", f"dropped {len(self._carry)} carry bytes "
                             "at a format change")
                self._add("partial_frame_bytes_dropped", len(self._carry))
            self._report("format_change", f"{self._format} -> {fmt}")
        self._format, self._carry = fmt, b""
        self._resampler = StreamingResampler(fmt.sample_rate, self.config.target_rate)
        return tail

    def process(self, data, fmt: AudioFormat,
                stamp_ns: Optional[int] = None) -> Optional[AudioChunk]:
        """Decode one message; ``None`` if nothing came of it (see the counters).

        ``stamp_ns``: the message's header stamp (stamped messages), only used
        to count stamp gaps; 0 or ``None`` means unknown.
        """
        try:
            fmt.validate()
        except AudioFormatError as err:
            self._report(err.reason, str(err))
            return None
        raw = _as_bytes(data, fmt)
        if not raw:
            self._report("empty", "empty message skipped")
            return None
        tail = self._switch_format(fmt) if fmt != self._format else None
        frames = self._decode(raw, fmt)
        pieces = [] if tail is None or not len(tail) else [tail]
        if frames is not None:
            if stamp_ns:
                self._check_stamp(int(stamp_ns), len(frames), fmt)
            pieces.append(self._resampler.process(downmix(frames)))
        if not pieces:
            return None
        samples = np.concatenate(pieces).astype(np.float32)
        chunk = AudioChunk(samples, self.sample_count)
        self.sample_count += len(samples)
        return chunk

    def _split(self, raw: bytes, fmt: AudioFormat) -> bytes:
        """Whole frames of ``raw``; the partial trailing frame is dropped or carried."""
        if self.config.carry_partial_frames:
            raw = self._carry + raw
        whole, partial = split_whole_frames(raw, fmt)
        self._carry = b""
        if not partial:
            return whole
        if self.config.carry_partial_frames:
            self._carry = partial
            self._report("odd_byte_count", f"{len(partial)} partial-frame bytes carried "
                         "to the next message (audio.frontend.carry_partial_frames)")
        else:
            self._add("partial_frame_bytes_dropped", len(partial))
            self._report("odd_byte_count", f"dropped the partial last frame ({len(partial)} "
                         f"of {fmt.frame_bytes} bytes) of a {len(raw)}-byte message; the "
                         "next message starts on a frame boundary")
        return whole

    def _decode(self, raw: bytes, fmt: AudioFormat) -> Optional[np.ndarray]:
        """Whole frames of ``raw`` as float32 ``[n, channels]``, non-finite zeroed; or None."""
        cfg = self.config
        whole = self._split(raw, fmt)
        if not whole:
            return None
        try:
            frames = decode_pcm(whole, fmt, cfg.max_message_seconds, cfg.max_message_bytes,
                                allow_non_finite=True)  # [n, channels]
        except AudioFormatError as err:
            self._carry = b""
            self._report(err.reason, str(err))
            return None
        n_bad = zero_non_finite(frames)
        if n_bad:
            self._warn("non_finite", f"set {n_bad} NaN/Inf samples of a message to 0",
                       non_finite_samples_zeroed=n_bad)
        return frames

    def _check_stamp(self, stamp_ns: int, n_frames: int, fmt: AudioFormat) -> None:
        """Count a header stamp that jumps ahead of the previous message's end."""
        duration_ns = n_frames * NS_PER_S // fmt.sample_rate
        last, self._last_stamp = self._last_stamp, (stamp_ns, duration_ns)
        if last is None:
            return
        gap = stamp_gap_ns(last[0], last[1], stamp_ns, duration_ns)
        if gap:
            gap_ms = int(round(gap / 1e6))
            self._warn("stamp_gap", f"header stamp {gap_ms} ms beyond the previous message's "
                       "end (audio missing upstream?); audio kept", stamp_gap_ms=gap_ms)
