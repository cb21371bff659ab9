"""The conversation runtime a node runs: session, output timeline and their two threads.

ROS-free.  :class:`ConversationRuntime` owns

* the :class:`~a2llm_ros.conversation.session.ConversationSession` (VAD,
  end-pointing, turn-taking, the answer generator),
* the :class:`~a2llm_ros.conversation.output.OutputScheduler` (one timeline for speech
  audio and FLAME frames, released ``lead`` before presentation),
* the *worker* thread (microphone chunks and generator steps) and the *clock*
  thread (25 fps tick, listening face, paced release of outputs),
* latency/RTF statistics.

The node gives it three callables: ``publish(item, stamp_ns, now_ns)`` turns a
released :class:`~a2llm_ros.conversation.output.Item` into messages, ``clock_ns()`` reads
the (possibly simulated) clock, ``warn(key, message)`` logs throttled warnings.
Commands for the worker (``reset``) go through a :class:`queue.Queue`.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from a2llm_ros.conversation.session import ConversationSession, SessionSink
from a2llm_ros.conversation.output import NS_PER_FRAME, Item, OutputScheduler

__all__ = ["ConversationRuntime", "CLOCK_POLL_S", "CLOCK_JUMP_NS", "THREAD_JOIN_S"]

#: The clock and worker threads wake at least this often (s).
CLOCK_POLL_S = 0.01
#: A backwards clock jump larger than this re-bases the output timeline (ns).
CLOCK_JUMP_NS = 1_000_000_000
#: How long stopping waits for the worker (mid-step) and each thread (s).
THREAD_JOIN_S = 1.5

Publish = Callable[[Item, int, int], None]


class _Sink(SessionSink):
    """Session callbacks (worker/clock threads, under the session lock): queue outputs."""

    def __init__(self, rt: "ConversationRuntime"):
        self.rt = rt

    def on_state(self, state, turn_id, reason):
        rt = self.rt
        now = time.monotonic()
        was_busy = rt.stats.get("state") in ("thinking", "speaking")
        rt.stats["state"] = state
        if state == "thinking":
            rt.stats.update(t_think=now, t_first=None, audio_s=0.0, answer_turn=turn_id)
        elif state == "speaking" and rt.stats.get("t_think") is not None:
            rt.stats["t_first"] = now
            rt.stats["first_output_latency_ms"] = 1000.0 * (now - rt.stats["t_think"])
        if state == "interrupted" or (was_busy and reason in ("reset", "generator_error")):
            # The answer stops: drop what is not yet published, close its text.
            # (After a generator error the session may already count the next turn.)
            answer = rt.stats.get("answer_turn", turn_id)
            rt.out.flush_turn(answer)
            if answer not in rt.final_sent:
                self._final_text(answer)
        rt.out.push_now("state", turn_id, state=state, reason=reason)
        rt.wake_clock.set()

    def _final_text(self, turn_id):
        self.rt.final_sent.add(turn_id)
        self.rt.out.push_now("text", turn_id, text="", final=True)

    def on_text(self, turn_id, text, final):
        if final:
            if turn_id not in self.rt.final_sent:
                self._final_text(turn_id)
        elif text:
            self.rt.out.push_now("text", turn_id, text=text, final=False)
        self.rt.wake_clock.set()

    def on_audio(self, turn_id, samples, start_sample):
        rt = self.rt
        anchor = rt.session.speech_anchor_frame
        if anchor is None:
            return
        rt.out.push_audio(turn_id, samples, rt.out.frame_sample(anchor) + int(start_sample),
                          gain=rt.session.gain)
        rt.stats["audio_s"] = rt.stats.get("audio_s", 0.0) + len(samples) / rt.output_rate
        if rt.stats.get("t_first") is not None and rt.stats["audio_s"] > 0:
            wall = time.monotonic() - rt.stats["t_think"]
            rt.stats["generation_rtf"] = wall / rt.stats["audio_s"]

    def on_flame(self, turn_id, frames, start_frame, source):
        rt = self.rt
        if source == "speech":
            anchor = rt.session.speech_anchor_frame
            if anchor is None:
                return
            rt.out.push_flame(turn_id, frames, anchor + int(start_frame), int(start_frame),
                              "speech")
        else:
            rt.out.push_flame(0, frames, int(start_frame), int(start_frame), "listening")

    def on_error(self, turn_id, message):
        self.rt.stats["errors"] = self.rt.stats.get("errors", 0) + 1
        self.rt.error(f"turn {turn_id}: {message}")


class ConversationRuntime:
    """Session + output timeline + worker and clock threads (see module docstring)."""

    def __init__(self, generator_factory: Callable[[], Any], out: OutputScheduler,
                 session_args: Dict[str, Any], output_rate: int, publish: Publish,
                 clock_ns: Callable[[], int],
                 warn: Callable[[str, str], None] = lambda key, message: None,
                 error: Callable[[str], None] = lambda message: None):
        """``session_args``: ``turn``, ``vad``, ``listening`` configs of the session and
        optionally its ``end_of_turn`` head;
        ``warn(key, message)`` throttled warnings, ``error(message)`` generator errors."""
        self.out, self.output_rate = out, int(output_rate)
        self.publish, self.clock_ns, self.warn, self.error = publish, clock_ns, warn, error
        self.stats: Dict[str, Any] = {}
        self.final_sent: set = set()
        self.origin_ns: Optional[int] = None
        self.last_frame = -1
        self.threads: List[threading.Thread] = []
        self.stop_event = threading.Event()
        self.wake_worker = threading.Event()
        self.wake_clock = threading.Event()
        self.commands: "queue.Queue[tuple]" = queue.Queue()
        self.session = ConversationSession(generator_factory, _Sink(self),
                                           session_args.get("turn"), session_args.get("vad"),
                                           session_args.get("listening"),
                                           output_rate=self.output_rate,
                                           end_of_turn=session_args.get("end_of_turn"))
        self.out.gain = lambda: self.session.gain

    # -- threads ---------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self.threads)

    def start(self) -> None:
        """Start the worker and clock threads (node: on_activate)."""
        if self.threads:
            return
        self.stop_event.clear()
        for target, name in ((self._worker_loop, "a2llm_worker"),
                             (self._clock_loop, "a2llm_clock")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self.threads.append(thread)
            thread.start()
        self.out.push_now("state", self.session.turn_id, state=self.session.state,
                          reason="activated")
        self.wake_clock.set()

    def stop(self, reset: bool = True) -> List[str]:
        """Cancel any answer (``reset``), stop and join the threads; returns the names of
        threads still busy after :data:`THREAD_JOIN_S` (left as daemons)."""
        if reset and self.threads:
            done = threading.Event()
            self.commands.put((self.session.reset, done))
            self.wake_worker.set()
            if not done.wait(THREAD_JOIN_S):
                self.warn("reset", f"worker did not reset within {THREAD_JOIN_S:.1f} s")
        self.stop_event.set()
        self.wake_worker.set()
        self.wake_clock.set()
        busy = []
        for thread in self.threads:
            thread.join(timeout=THREAD_JOIN_S)
            if thread.is_alive():
                busy.append(thread.name)
        self.threads = []
        return busy

    def submit_audio(self, samples: np.ndarray, start_sample: Optional[int]) -> None:
        """Queue 16 kHz microphone samples for the worker (executor thread)."""
        self.session.submit_audio(samples, start_sample)
        self.wake_worker.set()

    def _run_commands(self) -> None:
        while True:
            try:
                fn, done = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            finally:
                done.set()

    def _worker_loop(self) -> None:
        while not self.stop_event.is_set():
            self._run_commands()
            try:
                busy = self.session.step()
            except Exception as err:  # noqa: BLE001 (keep the node alive)
                self.warn("worker", f"conversation step failed: {err!r}")
                busy = False
            if not busy:
                self.wake_worker.wait(CLOCK_POLL_S)
                self.wake_worker.clear()
        self._run_commands()  # nobody waits forever on a command sent while stopping

    def _clock_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.clock_step(self.clock_ns())
            except Exception as err:  # noqa: BLE001
                self.warn("clock", f"output step failed: {err!r}")
            self.wake_clock.wait(CLOCK_POLL_S)
            self.wake_clock.clear()

    def clock_step(self, now_ns: int) -> None:
        """Advance the 25 fps tick to ``now_ns`` and publish what is due."""
        if now_ns <= 0:
            return  # sim time without /clock yet
        if self.origin_ns is None:
            self.origin_ns = now_ns - now_ns % NS_PER_FRAME
        rel = now_ns - self.origin_ns
        if rel < self.last_frame * NS_PER_FRAME - CLOCK_JUMP_NS:
            self.warn("clock_jump", "clock jumped back; re-basing the output timeline")
            self.origin_ns = now_ns - (self.last_frame + 1) * NS_PER_FRAME
            rel = now_ns - self.origin_ns
        frame = rel // NS_PER_FRAME
        if frame > self.last_frame:
            self.last_frame = frame
            self.session.tick(frame)
        for item in self.out.due(rel):
            self.publish(item, self.origin_ns + item.t_ns, now_ns)

    # -- figures -------------------------------------------------------------------
    def values(self) -> Dict[str, str]:
        """Runtime figures for diagnostics (state, latency, RTF, queues, counters)."""
        session = self.session
        values = {
            "conversation_state": session.state, "turn_id": str(session.turn_id),
            "output_sample_rate": str(self.output_rate),
            "input_queue_depth": str(session.queue_depth),
            "output_queue_depth": str(self.out.depth),
            "first_output_latency_ms": f"{self.stats.get('first_output_latency_ms', 0.0):.1f}",
            "generation_rtf": f"{self.stats.get('generation_rtf', 0.0):.3f}",
            "generator_errors": str(self.stats.get("errors", 0)),
        }
        for name, count in sorted(getattr(session, "counters", {}).items()):
            values[f"session.{name}"] = str(count)
        for name, count in sorted(self.out.counters.items()):
            values[f"output.{name}"] = str(count)
        return values
