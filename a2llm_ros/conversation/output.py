"""Presentation-time scheduling of the node's outputs (ROS-free, thread-safe).

Everything the conversation session emits is placed on one timeline: sample
``s`` of the output audio clock (``sample_rate``, e.g. 16 or 24 kHz) and FLAME
frame ``f`` of the 25 fps tick clock are presented at ``origin + s / rate`` and
``origin + f / 25`` seconds, in integer nanoseconds ``s * 10**9 // rate`` (exact
at any rate, also where ``10**9 / rate`` is no integer, e.g. 24 kHz) and
``f * 40 ms``.  The rate is a multiple of 25, so frame ``f`` and sample
``f * rate / 25`` (640 f at 16 kHz, 960 f at 24 kHz) share one time stamp.
Items are released for
publication ``lead`` before their presentation time (listening frames, whose
time has already come, and state/text at once), in time order:

* speech audio is cut into ``chunk_samples`` pieces (stamped with their first
  sample); a piece is scaled at release by ``current_gain / gain_at_emission``
  (barge-in ``duck``: audio already queued is ducked too, and restored);
* a FLAME run becomes one chunk item plus one item per frame;
* :meth:`OutputScheduler.flush_turn` drops everything not yet released of a
  turn (barge-in), so publication stops at once;
* FLAME frames never go backwards: frames at or before the last released
  frame are dropped (after a barge-in the listening face resumes after the
  speech frames already sent), and so is audio overlapping released audio.
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from a2llm_ros.constants import FLAME_FPS, NS_PER_S, SAMPLE_RATE
from a2llm_ros.conversation.resample import check_output_rate

__all__ = ["NS_PER_S", "NS_PER_FRAME", "sample_time_ns", "frame_first_sample", "Item",
           "DueQueue", "OutputScheduler", "PacedPublisher"]

NS_PER_FRAME = NS_PER_S // FLAME_FPS      # 40 ms
#: Audio released more than this after its presentation time counts as late.
LATE_NS = 20_000_000
#: Kinds whose late release is counted, and the counter name.
LATE_KINDS = {"audio": "late_audio_chunks", "flame_chunk": "late_flame_chunks",
              "flame_frame": "late_flame_frames"}
#: Item kinds that belong to a spoken answer (flushed on barge-in).
SPEECH_KINDS = ("audio", "flame_chunk", "flame_frame")
assert NS_PER_FRAME * FLAME_FPS == NS_PER_S


def sample_time_ns(sample: int, rate: int) -> int:
    """Presentation time (ns after the origin) of output sample ``sample`` at ``rate`` Hz.

    Integer multiply, then divide (floor): never a rounded ns-per-sample step,
    so sample ``f * rate / 25`` gets exactly frame ``f``'s ``f * NS_PER_FRAME``.
    """
    return int(sample) * NS_PER_S // int(rate)


def frame_first_sample(frame: int, rate: int) -> int:
    """Output sample at ``rate`` (a multiple of 25 Hz) where FLAME frame ``frame`` starts."""
    return int(frame) * (int(rate) // FLAME_FPS)


@dataclasses.dataclass
class Item:
    """One publication: ``kind`` is ``audio``, ``flame_chunk``, ``flame_frame``, ``state``
    or ``text``; ``t_ns`` its presentation time relative to the origin."""

    kind: str
    t_ns: int
    turn_id: int = 0
    payload: Dict[str, Any] = dataclasses.field(default_factory=dict)


class DueQueue:
    """Heap of items released at ``due_ns`` (ties in insertion order); thread-safe."""

    def __init__(self):
        self._heap: list = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def push(self, due_ns: int, item) -> None:
        with self._lock:
            heapq.heappush(self._heap, (int(due_ns), next(self._seq), item))

    def pop_due(self, now_ns: int) -> list:
        """Items with ``due_ns <= now_ns``, oldest first."""
        out = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now_ns:
                out.append(heapq.heappop(self._heap)[2])
        return out

    def remove(self, predicate: Callable[[Any], bool]) -> int:
        """Drop the items for which ``predicate`` is true; return how many."""
        with self._lock:
            keep = [e for e in self._heap if not predicate(e[2])]
            dropped = len(self._heap) - len(keep)
            if dropped:
                heapq.heapify(keep)
                self._heap = keep
            return dropped

    def next_due(self) -> Optional[int]:
        with self._lock:
            return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._heap)


class OutputScheduler:
    """Queues session output on the presentation timeline (see module docstring).

    Times are relative to the origin kept by the node; ``lead_ns`` may be
    changed at any time.  ``gain`` is a callable returning the current output
    gain (barge-in ducking).  ``sample_rate`` is the audio's rate (Hz, a multiple
    of 25); ``chunk_samples`` counts samples at that rate.
    """

    def __init__(self, lead_ns: int, chunk_samples: int,
                 gain: Optional[Callable[[], float]] = None,
                 sample_rate: int = SAMPLE_RATE):
        if chunk_samples < 1:
            raise ValueError("chunk_samples must be >= 1")
        self.sample_rate = check_output_rate(sample_rate, "OutputScheduler sample_rate")
        self.lead_ns = int(lead_ns)
        self.chunk_samples = int(chunk_samples)
        self.gain = gain or (lambda: 1.0)
        self._queue = DueQueue()
        self._lock = threading.Lock()
        self._last_frame = -1         # last released absolute FLAME frame
        self._audio_end = 0           # absolute sample after the last released audio
        self._chunk_floor = -1        # last frame of the last released FLAME chunk
        self.counters: Dict[str, int] = {}

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # ------------------------------------------------------------------ push
    def push_now(self, kind: str, turn_id: int = 0, **payload) -> None:
        """State/text: released at the next :meth:`due` call."""
        self._queue.push(-(1 << 62), Item(kind, 0, turn_id, payload))

    def sample_ns(self, sample: int) -> int:
        """Presentation time (relative ns) of absolute output sample ``sample``."""
        return sample_time_ns(sample, self.sample_rate)

    def frame_sample(self, frame: int) -> int:
        """Absolute output sample where absolute FLAME frame ``frame`` starts."""
        return frame_first_sample(frame, self.sample_rate)

    def push_audio(self, turn_id: int, samples: np.ndarray, abs_sample: int,
                   gain: float = 1.0) -> None:
        """float32 ``[n]`` speech at ``sample_rate`` from absolute output sample ``abs_sample``."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        step = self.chunk_samples
        for off in range(0, len(samples), step):
            start = int(abs_sample) + off
            item = Item("audio", self.sample_ns(start), turn_id,
                        {"samples": samples[off:off + step], "abs_sample": start,
                         "gain": float(gain)})
            self._queue.push(item.t_ns, item)

    def push_flame(self, turn_id: int, frames: np.ndarray, abs_frame: int,
                   first_index: int, source: str) -> None:
        """FLAME ``[n, D]`` at absolute frames ``abs_frame ..``; ``first_index`` within turn."""
        frames = np.asarray(frames, dtype=np.float32)
        if not len(frames):
            return
        t0 = int(abs_frame) * NS_PER_FRAME
        chunk = Item("flame_chunk", t0, turn_id,
                     {"frames": frames, "abs_frame": int(abs_frame),
                      "first_index": int(first_index), "source": source})
        self._queue.push(t0, chunk)
        for i in range(len(frames)):
            item = Item("flame_frame", t0 + i * NS_PER_FRAME, turn_id,
                        {"frame": frames[i], "abs_frame": int(abs_frame) + i,
                         "index": int(first_index) + i, "source": source})
            self._queue.push(item.t_ns, item)

    # ------------------------------------------------------------------ control
    def flush_turn(self, turn_id: Optional[int]) -> int:
        """Drop unreleased speech audio/FLAME of ``turn_id`` (None: of every turn).

        Returns how many items were dropped.
        """
        dropped = self._queue.remove(
            lambda it: it.kind in SPEECH_KINDS and it.turn_id > 0
            and (turn_id is None or it.turn_id == turn_id))
        with self._lock:
            self._count("flushed_items", dropped)
        return dropped

    def clear(self) -> None:
        self._queue.remove(lambda it: True)

    @property
    def depth(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ release
    def due(self, now_rel_ns: int) -> List[Item]:
        """Items to publish now (relative time ``now_rel_ns``), trimmed to stay monotonic.

        Queued items are keyed by presentation time and released once it is
        less than ``lead_ns`` away, so a changed lead applies to them too.
        """
        out = []
        with self._lock:
            for item in self._queue.pop_due(int(now_rel_ns) + self.lead_ns):
                item = self._trim(item)
                if item is None:
                    continue
                if item.kind in LATE_KINDS:
                    self._check_late(item, now_rel_ns)
                if item.kind == "audio":
                    self._apply_gain(item)
                out.append(item)
        return out

    def _check_late(self, item: Item, now_rel_ns: int) -> None:
        """Count an item released after its presentation time (+ LATE_NS tolerance) and
        keep the worst lateness per kind (``late_ms_max.<kind>``, whole ms)."""
        late_ns = now_rel_ns - item.t_ns
        if late_ns <= LATE_NS:
            return
        self._count(LATE_KINDS[item.kind])
        key = f"late_ms_max.{item.kind}"
        self.counters[key] = max(self.counters.get(key, 0), late_ns // 1_000_000)

    def _apply_gain(self, item: Item) -> None:
        emitted = item.payload["gain"]
        current = float(self.gain())
        if emitted > 0 and abs(current - emitted) > 1e-6:
            item.payload["samples"] = item.payload["samples"] * np.float32(current / emitted)

    def _trim(self, item: Item) -> Optional[Item]:
        p = item.payload
        if item.kind == "flame_frame":
            if p["abs_frame"] <= self._last_frame:
                self._count("dropped_overlapping_frames")
                return None
            self._last_frame = p["abs_frame"]
        elif item.kind == "flame_chunk":
            skip = max(0, self._chunk_floor - p["abs_frame"] + 1)
            if skip >= len(p["frames"]):
                return None
            if skip:
                p = dict(p, frames=p["frames"][skip:], abs_frame=p["abs_frame"] + skip,
                         first_index=p["first_index"] + skip)
                item = Item(item.kind, p["abs_frame"] * NS_PER_FRAME, item.turn_id, p)
            self._chunk_floor = p["abs_frame"] + len(p["frames"]) - 1
        elif item.kind == "audio":
            skip = max(0, self._audio_end - p["abs_sample"])
            if skip >= len(p["samples"]):
                self._count("dropped_overlapping_audio")
                return None
            if skip:
                p = dict(p, samples=p["samples"][skip:], abs_sample=p["abs_sample"] + skip)
                item = Item(item.kind, self.sample_ns(p["abs_sample"]), item.turn_id, p)
            self._audio_end = p["abs_sample"] + len(p["samples"])
        return item


class PacedPublisher:
    """A thread that calls ``publish(payload)`` when ``now_ns()`` reaches each item's time.

    Items whose time lies more than ``max_ahead_ns`` in the future (a clock
    mismatch, e.g. stamps from a bag without sim time) are published at once.
    """

    def __init__(self, now_ns: Callable[[], int], publish: Callable[[Any], None],
                 max_ahead_ns: int = 2_000_000_000, poll_s: float = 0.005,
                 on_error: Optional[Callable[[BaseException], None]] = None):
        self.now_ns, self.publish, self.max_ahead_ns = now_ns, publish, int(max_ahead_ns)
        self.poll_s, self.on_error = poll_s, on_error
        self.queue = DueQueue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced_publisher", daemon=True)
        self._thread.start()

    def push(self, t_ns: int, payload) -> None:
        if int(t_ns) - self.now_ns() > self.max_ahead_ns:
            t_ns = 0
        self.queue.push(int(t_ns), (int(t_ns), payload))
        self._wake.set()

    def flush_after(self, t_ns: int) -> int:
        """Drop queued items due after ``t_ns``; return how many."""
        return self.queue.remove(lambda it: it[0] > t_ns)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            for _, payload in self.queue.pop_due(self.now_ns()):
                try:
                    self.publish(payload)
                except Exception as err:  # noqa: BLE001 (keep pacing)
                    if self.on_error is not None:
                        self.on_error(err)
            self._wake.wait(self.poll_s)
            self._wake.clear()
