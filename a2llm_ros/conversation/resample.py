"""An answer's speech audio at the node's output rate (ROS-free).

The answer generator emits audio at its speech codec's rate (16 kHz for the
tiny codec, 24 kHz for Step-Audio-2's CosyVoice2 codec); the node publishes
it at one output rate.  :class:`TurnAudio` turns one turn's audio events into
output-rate pieces placed on the turn's output timeline: at the output rate
they pass through untouched; otherwise one :class:`StreamResampler`
(``soxr.ResampleStream``) per contiguous run resamples them chunk by chunk, so
chunk joins carry no clicks, and :meth:`TurnAudio.finish` (the turn's end)
releases the resampler's held-back tail.

Lengths are exact: ``n`` input samples become ``resampled_length(n)`` output
samples (``n * out_rate / in_rate`` rounded half up) over a whole run, and never
more than that of the input so far, so output sample ``k`` is presented where
input sample ``k * in_rate / out_rate`` belongs.  soxr holds back ~20-30 ms
(its filter delay) until the next chunk or the end.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from a2llm_ros.constants import FLAME_FPS

__all__ = ["MIN_OUTPUT_RATE", "MAX_OUTPUT_RATE", "RESAMPLE_QUALITY", "check_output_rate",
           "resampled_length", "StreamResampler", "TurnAudio", "Piece"]

#: Lowest and highest output sample rates accepted (Hz).
MIN_OUTPUT_RATE = 8_000
MAX_OUTPUT_RATE = 192_000
#: soxr quality recipe of the output resampler ("HQ": soxr's default).
RESAMPLE_QUALITY = "HQ"

#: ``(samples float32 [n], start)``: output audio starting at turn output sample ``start``.
Piece = Tuple[np.ndarray, int]


def check_output_rate(rate: int, name: str = "output sample rate") -> int:
    """``rate`` as an int if it can be the output rate, else ``ValueError``.

    It must lie in ``MIN_OUTPUT_RATE..MAX_OUTPUT_RATE`` and be a multiple of the
    FLAME frame rate (25), so that FLAME frame ``f`` starts at the whole output
    sample ``f * rate / 25`` (8000, 16000, 22050, 24000, 44100, 48000 Hz all are).
    """
    try:
        whole = not isinstance(rate, bool) and int(rate) == rate
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise ValueError(f"{name} must be an integer number of Hz, got {rate!r}")
    rate = int(rate)
    if not MIN_OUTPUT_RATE <= rate <= MAX_OUTPUT_RATE or rate % FLAME_FPS:
        raise ValueError(f"{name} must be a multiple of {FLAME_FPS} Hz in "
                         f"{MIN_OUTPUT_RATE}..{MAX_OUTPUT_RATE}, got {rate}")
    return rate


def resampled_length(n_in: int, in_rate: int, out_rate: int) -> int:
    """``n_in * out_rate / in_rate`` rounded half up, in integer arithmetic."""
    return (2 * int(n_in) * int(out_rate) + int(in_rate)) // (2 * int(in_rate))


class StreamResampler:
    """One continuous signal resampled chunk by chunk with an exact length.

    After :meth:`process` calls totalling ``n`` input samples at most
    ``resampled_length(n)`` samples have come out; :meth:`finish` returns the
    rest, so the whole run is exactly ``resampled_length(n)`` long (soxr's own
    count, which it matches; a difference would be trimmed or zero-padded).
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = RESAMPLE_QUALITY):
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be > 0, got {in_rate} -> {out_rate}")
        import soxr  # only needed when the codec rate differs from the output rate
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, 1,
                                           dtype="float32", quality=quality)
        self._held = np.zeros(0, np.float32)  # produced beyond what may come out yet
        self.n_in = 0
        self.n_out = 0
        self.finished = False

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed float32 ``[n]``; return the output samples ready now."""
        if self.finished:
            raise RuntimeError("StreamResampler: process() after finish()")
        samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        self.n_in += len(samples)
        out = self._stream.resample_chunk(samples) if len(samples) else samples[:0]
        return self._release(out, last=False)

    def finish(self) -> np.ndarray:
        """The held-back tail (``last=True``); the run then has its exact length."""
        if self.finished:
            return np.zeros(0, np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        self.finished = True
        return self._release(tail, last=True)

    def _release(self, out: np.ndarray, last: bool) -> np.ndarray:
        """Output up to the exact length of the input so far (padded at the end)."""
        out = np.concatenate([self._held, np.asarray(out, np.float32).reshape(-1)])
        allowed = resampled_length(self.n_in, self.in_rate, self.out_rate) - self.n_out
        if last and len(out) < allowed:
            out = np.concatenate([out, np.zeros(allowed - len(out), np.float32)])
        ready, self._held = out[:allowed], out[allowed:]
        self.n_out += len(ready)
        return ready


class TurnAudio:
    """One turn's audio events -> output-rate :data:`Piece` s on the turn's timeline.

    Events at ``out_rate`` pass through as they are (``start`` unchanged).  A
    contiguous run at another rate goes through one :class:`StreamResampler`
    whose output starts at the output sample of the run's first input sample
    (``resampled_length(start)``, or right after the output so far if that is
    later); a gap in the input ends the run and starts a new one (the gap stays
    a gap), overlapping input is dropped, and so does a change of rate.
    """

    def __init__(self, out_rate: int, quality: str = RESAMPLE_QUALITY):
        self.out_rate = int(out_rate)
        self.quality = quality
        self._stream: Optional[StreamResampler] = None
        self._base_in = 0     # input sample (at the run's rate) where the run starts
        self._base_out = 0    # turn output sample where the run's output starts
        self.out_end = 0      # turn output sample after the latest piece
        self.counters = {"gaps": 0, "overlaps": 0, "rate_changes": 0}

    @property
    def resampling(self) -> bool:
        """Whether a resampler run is open (its tail still to come)."""
        return self._stream is not None

    def next_start(self, rate: int) -> int:
        """Where an event at ``rate`` without ``start_sample`` continues."""
        stream = self._stream
        if stream is not None and stream.in_rate == rate:
            return self._base_in + stream.n_in
        return self.out_end if rate == self.out_rate else 0

    def push(self, samples: np.ndarray, rate: int, start: int) -> List[Piece]:
        """Pieces of output audio for one event (possibly none yet: held back)."""
        if int(rate) <= 0:
            raise ValueError(f"audio event with sample_rate {rate}")
        rate, start = int(rate), int(start)
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        pieces: List[Piece] = []
        if self._stream is not None and self._stream.in_rate != rate:
            self.counters["rate_changes"] += 1
            pieces += self.finish()
        if rate == self.out_rate:
            return pieces + self._emit(samples, start)
        if self._stream is not None:
            expected = self._base_in + self._stream.n_in
            if start < expected:
                self.counters["overlaps"] += 1
                samples, start = samples[expected - start:], expected
            elif start > expected:
                self.counters["gaps"] += 1
                pieces += self.finish()
        if self._stream is None:
            self._stream = StreamResampler(rate, self.out_rate, self.quality)
            self._base_in = start
            self._base_out = max(self.out_end, resampled_length(start, rate, self.out_rate))
        stream = self._stream
        if len(samples):
            at = self._base_out + stream.n_out
            pieces += self._emit(stream.process(samples), at)
        return pieces

    def finish(self) -> List[Piece]:
        """End of the turn (or of a run): the resampler's tail, if any."""
        stream, self._stream = self._stream, None
        if stream is None:
            return []
        at = self._base_out + stream.n_out
        return self._emit(stream.finish(), at)

    def _emit(self, samples: np.ndarray, start: int) -> List[Piece]:
        if not len(samples):
            return []
        self.out_end = max(self.out_end, start + len(samples))
        return [(samples, start)]
