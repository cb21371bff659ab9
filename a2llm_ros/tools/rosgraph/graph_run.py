"""Replay a bag through the whole a2llm_ros graph in one process and measure what comes out.

Used by ``a2llm demo``, ``a2llm bench --graph`` and the graph tests;
:mod:`a2llm_ros.tools.rosgraph.graph_procs` runs the same replay with every node in a
process of its own (as the launch file does) and measures it the same way
(:class:`Collector`, :func:`build_turns`, :class:`GraphResult`).
:func:`run_graph` does, in its own rclpy ``Context``:

1. starts ``a2llm_node`` with ``autostart`` (parameters: the parameter file
   ``config/a2llm.yaml``, then :attr:`GraphConfig.params`), plus
   ``flame_retarget_node`` / ``face_preview_node`` on request, and waits
   until it is active (a failed configure raises :class:`GraphStartError`
   with the node's reason);
2. subscribes a *collector* to every output (``conversation_state``,
   ``response_text``, ``speech/audio_stamped``, ``flame/chunks``,
   ``flame/frames``, ``/diagnostics``, ``/rosout``, ``face_commands``) and,
   with :attr:`GraphConfig.record`, a :class:`~a2llm_ros.tools.rosgraph.bag_record.BagRecorder`
   on every input and output topic (one MCAP);
3. plays the bag with :class:`~a2llm_ros.tools.rosgraph.bag_play.BagPlayer` at
   :attr:`GraphConfig.rate`, waits until the expected turns are over and the
   conversation is idle (or the timeout), samples CPU and memory meanwhile
   (``psutil``), and tears everything down;
4. returns a :class:`GraphResult`: per-turn :class:`TurnResult` (states,
   question end, first text / audio / FLAME arrival, answer audio and FLAME,
   stamps, skew, generator timing) and the run-wide logs.

Times are ``time.monotonic()`` seconds of this process; message times are
the collector's receive times (same process, so "published" within the DDS
delivery time, typically < 1 ms).  The generator inside the node is wrapped
(:class:`ProbeGenerator`) to time it per turn; ``GraphConfig.wrap_generator`` adds a
wrapper of the caller's inside the probe (the fault-matrix tests inject faults this way).

**Question end** (the origin of the latencies): the end of the user's speech
in the bag, from the fixture sidecar's utterance ``offset_s`` mapped to this
process's clock through the player's start time and rate; each turn takes the
latest utterance end before its ``THINKING`` state.  Without a sidecar it is
the node's end-of-utterance (``THINKING``) minus ``vad.min_silence_ms``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter

from a2llm_ros.tools.bags.io import bag_topics
from a2llm_ros.constants import NS_PER_S, SAMPLE_RATE, SAMPLES_PER_FRAME
from a2llm_ros.conversation.session import STATES
from a2llm_ros.events import AudioEvent, EndEvent, FlameEvent, TextEvent
from a2llm_ros.ros import msgconv as mc
from a2llm_ros.ros.a2llm_node import A2llmNode
from a2llm_ros.tools.rosgraph.bag_play import BagPlayer, no_sub_events
from a2llm_ros.ros.qos import output_qos

__all__ = ["GraphConfig", "GraphResult", "TurnResult", "GraphStartError", "ProbeGenerator",
           "Collector", "TimedPlayer", "run_graph", "build_turns", "replay_and_wait",
           "load_sidecar", "write_question_bag", "STATE_NAMES"]

STATE_NAMES = STATES
IDLE, LISTENING, THINKING, SPEAKING, INTERRUPTED = range(5)
SOURCE_SPEECH = 0
#: Reasons of an IDLE state that do not end an answered turn.
NON_ANSWER_IDLE = ("no_speech", "activated", "reset")
EXECUTOR_THREADS = 4
COLLECT_DEPTH = 1000
#: Queue depth of the (serialized) face_marker subscription.
MARKER_DEPTH = 5
#: Node names whose /rosout lines the collector keeps.
GRAPH_NODES = ("a2llm_node", "flame_retarget_node", "face_preview_node")
#: After the bag ended: stop once the node was idle this long (s) beyond vad.min_silence_ms.
IDLE_GRACE_S = 1.5


class GraphStartError(RuntimeError):
    """The graph could not start (configure failed, activation timed out).

    ``lifecycle_state``: the a2llm_node's state when it gave up (``unconfigured``
    after a failed configure: the node survived the FAILURE transition)."""

    def __init__(self, message: str, lifecycle_state: str = ""):
        super().__init__(message)
        self.lifecycle_state = lifecycle_state


@dataclasses.dataclass
class GraphConfig:
    """What :func:`run_graph` runs."""

    #: rosbag2 directory to replay (ros-drivers or mgonzs13 audio).
    bag: str
    #: a2llm_node ``model.checkpoint`` (a directory or ``default``).
    checkpoint: str = "default"
    #: Fixture sidecar (dict or JSON path): question times for the latencies.
    sidecar: Any = None
    rate: float = 1.0
    #: Namespace of every node ("" = the standard topic names); the bag's topics are
    #: remapped into it.
    namespace: str = ""
    #: Parameter file (name in config/ or a path) loaded before :attr:`params`; None = none.
    params_file: Optional[str] = "a2llm.yaml"
    #: Extra a2llm_node parameters, dotted names (``generation.max_speech_tokens``: 50).
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    retarget: bool = False
    retarget_params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    preview: bool = False
    preview_params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Record every input and output topic into this new bag directory (MCAP).
    record: Optional[str] = None
    #: Turns to wait for (default: the sidecar's utterances, else until idle).
    expected_turns: Optional[int] = None
    timeout_s: float = 120.0
    activate_timeout_s: float = 180.0
    #: Extra time after the end, for the last frames and diagnostics.
    settle_s: float = 0.5
    #: Keep answer audio samples and FLAME vectors (False: counts and stamps only).
    keep_payloads: bool = True
    #: Keep the question waves the generator got (for an in-process comparison).
    keep_questions: bool = False
    resource_period_s: float = 0.25
    #: Wraps the node's generator inside the probe (``generator -> generator``), e.g. a
    #: test's fault injection.
    wrap_generator: Optional[Callable[[Any], Any]] = None
    #: Seconds to wait for subscribers before playing.
    wait_for_subscribers_s: float = 10.0
    #: Publish an AudioInfo stamped at the bag's start (before any audio) once before
    #: playing, as a live capture node does at start-up: without it the first audio
    #: message can overtake the info (two topics) and be decoded with the fallback format.
    prime_info: bool = True
    #: Subscribe to ``face_marker`` (serialized, as RViz would): face_preview_node only
    #: renders meshes while someone subscribes (``publish_without_subscribers``).
    watch_markers: bool = False


# ----------------------------------------------------------------------------- generator probe

class ProbeGenerator:
    """Wraps the node's ``StreamingGenerator`` and times each turn."""

    def __init__(self, inner, log: List[dict], lock: threading.Lock, keep_questions=False):
        self.inner, self.log, self.lock = inner, log, lock
        self.keep_questions = keep_questions
        self._rec: Optional[dict] = None
        self._steps = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def start(self, question_wave, turn_id: Optional[int] = None):
        wave = np.asarray(question_wave, np.float32)
        rec = {"turn_id": turn_id, "t_start": time.monotonic(), "question_s":
               len(wave) / SAMPLE_RATE, "audio_samples": 0, "n_frames": 0, "t_end": None,
               "t_first_audio": None, "t_first_flame": None, "t_first_text": None,
               "end_reason": None, "error": None, "steps": 0}
        if self.keep_questions:
            rec["question"] = wave.copy()
        with self.lock:
            self.log.append(rec)
        self._rec, self._steps = rec, 0
        out = self.inner.start(question_wave, turn_id=turn_id)
        rec["t_prefill_done"] = time.monotonic()
        return out

    def step(self):
        rec = self._rec
        self._steps += 1
        try:
            events = self.inner.step()
        except Exception as err:
            if rec is not None:
                rec.update(error=repr(err), t_end=time.monotonic())
            raise
        if rec is not None:
            self._note(rec, events)
        return events

    def _note(self, rec: dict, events) -> None:
        now = time.monotonic()
        rec["steps"] = self._steps
        for event in events or ():
            if isinstance(event, FlameEvent):
                rec["n_frames"] += len(event.frames)
                rec["t_first_flame"] = rec["t_first_flame"] or now
            elif isinstance(event, AudioEvent):
                rec["audio_samples"] += int(np.asarray(event.samples).shape[0])
                rec["t_first_audio"] = rec["t_first_audio"] or now
            elif isinstance(event, TextEvent):
                rec["t_first_text"] = rec["t_first_text"] or now
            elif isinstance(event, EndEvent):
                rec.update(end_reason=str(event.reason), t_end=now)

    def cancel(self):
        rec = self._rec
        if rec is not None and rec["t_end"] is None:
            rec.update(end_reason="cancelled", t_end=time.monotonic())
        return self.inner.cancel()


# ----------------------------------------------------------------------------- collector

class Collector:
    """Subscribes to the graph's outputs and keeps light records (thread-safe)."""

    def __init__(self, node, ns: str, flavour: str, sample_format: str, keep_payloads: bool,
                 node_fqn: str, retarget: bool, markers: bool = False):
        import audio_common_msgs.msg as am
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.msg import Log

        from a2llm_ros.msg import ConversationState, FlameChunk, FlameFrame, ResponseText
        self.lock = threading.Lock()
        self.keep = keep_payloads
        self.sample_format = sample_format.upper()
        self.node_fqn = node_fqn
        prefix = node_fqn.strip("/").replace("/", ".")[:-len("a2llm_node")]
        self.logger_names = {prefix + n for n in GRAPH_NODES}
        self.states: List[Tuple[float, int, int, str]] = []
        self.texts: List[Tuple[float, int, str, bool]] = []
        self.audio: List[Tuple[float, int, int, Optional[np.ndarray]]] = []
        self.frames: List[Tuple[float, int, int, Optional[np.ndarray]]] = []
        self.chunks: List[Tuple[float, int, int, int, int, int]] = []
        self.diagnostics: List[Tuple[float, int, Dict[str, str]]] = []
        self.logs: List[Tuple[float, int, str, str]] = []  # (t, level, message, logger)
        self.face_commands = 0
        self.markers: List[float] = []  # receive times of face_marker messages
        qos = output_qos(COLLECT_DEPTH)
        audio_cls = am.AudioStamped if flavour == "mgonzs13" else am.AudioDataStamped
        subs = [(ConversationState, "conversation_state", self._on_state),
                (ResponseText, "response_text", self._on_text),
                (audio_cls, "speech/audio_stamped", self._on_audio),
                (FlameFrame, "flame/frames", self._on_frame),
                (FlameChunk, "flame/chunks", self._on_chunk),
                (DiagnosticArray, "/diagnostics", self._on_diagnostics),
                (Log, "/rosout", self._on_log)]
        if retarget:
            from sensor_msgs.msg import JointState
            subs.append((JointState, "face_commands", self._on_command))
        self.subs = [node.create_subscription(cls, join_topic(ns, topic), cb, qos,
                                              event_callbacks=no_sub_events())
                     for cls, topic, cb in subs]
        if markers:  # serialized: a full-mesh Marker holds ~30 000 points
            from visualization_msgs.msg import Marker
            self.subs.append(node.create_subscription(
                Marker, join_topic(ns, "face_marker"), self._on_marker, output_qos(MARKER_DEPTH),
                event_callbacks=no_sub_events(), raw=True))

    # -- callbacks (executor threads): convert and append
    def _on_state(self, msg):
        with self.lock:
            self.states.append((time.monotonic(), int(msg.state), int(msg.turn_id),
                                str(msg.reason)))

    def _on_text(self, msg):
        with self.lock:
            self.texts.append((time.monotonic(), int(msg.turn_id), str(msg.text),
                               bool(msg.final)))

    def _on_audio(self, msg):
        t = time.monotonic()
        samples = _decode_speech(msg, self.sample_format)
        with self.lock:
            self.audio.append((t, mc.to_ns(msg.header.stamp), len(samples),
                               samples if self.keep else None))

    def _on_frame(self, msg):
        t = time.monotonic()
        vec = mc.frame_vector(msg, len(msg.expression) or 50) if self.keep else None
        with self.lock:
            self.frames.append((t, mc.to_ns(msg.header.stamp), int(msg.turn_id), vec))

    def _on_chunk(self, msg):
        with self.lock:
            self.chunks.append((time.monotonic(), mc.to_ns(msg.header.stamp),
                                int(msg.turn_id), int(msg.first_frame_index),
                                int(msg.source), len(msg.frames)))

    def _on_diagnostics(self, msg):
        t = time.monotonic()
        for status in msg.status:
            if self.node_fqn in status.name:
                values = {kv.key: kv.value for kv in status.values}
                with self.lock:
                    self.diagnostics.append((t, int.from_bytes(bytes(status.level), "little")
                                             if isinstance(status.level, bytes)
                                             else int(status.level), values))

    def _on_log(self, msg):
        if msg.name in self.logger_names:
            with self.lock:
                self.logs.append((time.monotonic(), int(msg.level), str(msg.msg),
                                  str(msg.name)))

    def _on_command(self, msg):
        with self.lock:
            self.face_commands += 1

    def _on_marker(self, raw):
        with self.lock:
            self.markers.append(time.monotonic())

    def snapshot_states(self) -> List[Tuple[float, int, int, str]]:
        with self.lock:
            return list(self.states)

    def destroy(self, node) -> None:
        for sub in self.subs:
            try:
                node.destroy_subscription(sub)
            except Exception:  # noqa: BLE001 - context already shut down
                pass


def _decode_speech(msg, sample_format: str) -> np.ndarray:
    """Speech audio message -> float32 [n] (ros-drivers bytes or mgonzs13 typed arrays)."""
    audio = getattr(msg, "audio", None)
    if audio is not None and hasattr(audio, "audio_data"):  # mgonzs13 AudioStamped
        data = audio.audio_data
        if len(data.float32_data):
            return np.asarray(data.float32_data, np.float32)
        return np.asarray(data.int16_data, np.float32) / 32768.0
    raw = mc.raw_bytes(msg.audio.data)
    if sample_format == "F32LE":
        return np.frombuffer(raw, "<f4").astype(np.float32)
    return np.frombuffer(raw[:len(raw) // 2 * 2], "<i2").astype(np.float32) / 32768.0


def join_topic(ns: str, topic: str) -> str:
    """``topic`` in namespace ``ns`` (absolute topics stay as they are)."""
    if topic.startswith("/") or not ns:
        return topic if topic.startswith("/") else "/" + topic
    return ns.rstrip("/") + "/" + topic


# ----------------------------------------------------------------------------- resources

class ResourceSampler:
    """CPU % (100 = one core) and RSS of this process every ``period`` seconds."""

    def __init__(self, period: float):
        import psutil
        self.proc = psutil.Process()
        self.period = period
        self.samples: List[Tuple[float, float, float]] = []  # (t, cpu %, rss MB)
        self._stop = threading.Event()
        self.proc.cpu_percent(None)
        self._thread = threading.Thread(target=self._run, name="graph_resources", daemon=True)

    def start(self) -> "ResourceSampler":
        self._thread.start()
        return self

    def sample(self) -> Tuple[float, float, float]:
        """One sample now (also appended)."""
        row = (time.monotonic(), float(self.proc.cpu_percent(None)),
               self.proc.memory_info().rss / 1e6)
        self.samples.append(row)
        return row

    def _run(self):
        while not self._stop.wait(self.period):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


class TimedPlayer(BagPlayer):
    """BagPlayer that keeps the wall-clock origin of its (first) pass."""

    wall0: Optional[float] = None

    def _tick_clock(self, wall0, bag_ns=None, at=None):
        if self.wall0 is None:
            self.wall0 = wall0
        super()._tick_clock(wall0, bag_ns, at)


# ----------------------------------------------------------------------------- results

@dataclasses.dataclass
class TurnResult:
    """One answered turn (it reached ``THINKING``)."""

    turn_id: int
    states: List[Tuple[float, int, str]]
    question_end: Optional[float] = None       # monotonic s (see module docstring)
    question_text: Optional[str] = None
    t_listening: Optional[float] = None
    t_thinking: Optional[float] = None
    t_speaking: Optional[float] = None
    t_end: Optional[float] = None
    end_state: Optional[int] = None           # IDLE or INTERRUPTED (None: never ended)
    end_reason: str = ""
    text: str = ""
    n_final: int = 0
    first_text: Optional[float] = None
    first_audio: Optional[float] = None
    first_flame: Optional[float] = None
    audio_stamps: List[int] = dataclasses.field(default_factory=list)
    audio_sizes: List[int] = dataclasses.field(default_factory=list)
    audio_recv: List[float] = dataclasses.field(default_factory=list)
    audio: Optional[np.ndarray] = None        # [n] float32 16 kHz
    frame_stamps: Optional[np.ndarray] = None  # [T] int64 ns (flame/frames)
    frame_recv: Optional[np.ndarray] = None    # [T] s
    frames: Optional[np.ndarray] = None       # [T, D]
    chunk_indices: List[int] = dataclasses.field(default_factory=list)
    chunk_sizes: List[int] = dataclasses.field(default_factory=list)  # frames per chunk
    chunk_frames: int = 0
    gen: Optional[dict] = None                # ProbeGenerator record

    @property
    def interrupted(self) -> bool:
        return self.end_state == INTERRUPTED

    @property
    def audio_s(self) -> float:
        return sum(self.audio_sizes) / SAMPLE_RATE

    def latency_ms(self, event: str, origin: Optional[float] = None) -> Optional[float]:
        """``event`` (first_text/first_audio/first_flame/t_thinking...) after ``origin``
        (default: the question end), in ms."""
        t, t0 = getattr(self, event), self.question_end if origin is None else origin
        return None if t is None or t0 is None else 1000.0 * (t - t0)

    def stamp_skew_ms(self) -> np.ndarray:
        """FLAME frame k's stamp minus the stamp of answer sample 640 k (ms), per frame."""
        if not self.audio_stamps or self.frame_stamps is None or not len(self.frame_stamps):
            return np.zeros(0)
        starts = np.cumsum([0] + self.audio_sizes)
        n = min(len(self.frame_stamps), int(starts[-1] // SAMPLES_PER_FRAME))
        out = np.zeros(n)
        for k in range(n):
            sample = SAMPLES_PER_FRAME * k
            i = int(np.searchsorted(starts, sample, side="right") - 1)
            audio_ns = self.audio_stamps[i] + (sample - starts[i]) * NS_PER_S // SAMPLE_RATE
            out[k] = (int(self.frame_stamps[k]) - audio_ns) / 1e6
        return out

    def arrival_skew_ms(self) -> np.ndarray:
        """Arrival of FLAME frame k minus arrival of the audio message holding sample 640 k."""
        if not self.audio_recv or self.frame_recv is None or not len(self.frame_recv):
            return np.zeros(0)
        starts = np.cumsum([0] + self.audio_sizes)
        n = min(len(self.frame_recv), int(starts[-1] // SAMPLES_PER_FRAME))
        idx = np.searchsorted(starts, SAMPLES_PER_FRAME * np.arange(n), side="right") - 1
        return 1000.0 * (np.asarray(self.frame_recv[:n]) - np.asarray(self.audio_recv)[idx])

    def generation_rtf(self) -> Optional[float]:
        """Generator wall time / answer audio duration (from the probe)."""
        g = self.gen
        if not g or not g.get("audio_samples") or g.get("t_end") is None:
            return None
        return (g["t_end"] - g["t_start"]) / (g["audio_samples"] / SAMPLE_RATE)


@dataclasses.dataclass
class GraphResult:
    """Everything :func:`run_graph` measured (times: monotonic s)."""

    config: GraphConfig
    turns: List[TurnResult]
    t_play_start: Optional[float]
    t_play_end: Optional[float]
    t_end: float
    timed_out: bool
    play_stats: Any
    utterance_ends: List[Tuple[float, str]]   # (monotonic s, text) from the sidecar
    states: List[Tuple[float, int, int, str]]
    texts: List[Tuple[float, int, str, bool]]
    audio: List[Tuple[float, int, int, Optional[np.ndarray]]]
    frames: List[Tuple[float, int, int, Optional[np.ndarray]]]
    chunks: List[Tuple[float, int, int, int, int, int]]
    diagnostics: List[Tuple[float, int, Dict[str, str]]]
    logs: List[Tuple[float, int, str, str]]  # (t, level, message, logger name)
    face_commands: int
    resources: List[Tuple[float, float, float]]
    node_values: Dict[str, str]               # diagnostics_values() just before teardown
    lifecycle_state: str
    threads_alive: bool
    recorded: Dict[str, int]
    backend_kind: str
    node_config: Any                          # A2llmNodeConfig in force
    probe: List[dict]
    ros_offset_s: float                       # ROS (system) time minus monotonic time
    warmup_s: float = 0.0
    flame_version: int = 2020
    #: face_marker receive times (monotonic s; :attr:`GraphConfig.watch_markers`).
    markers: List[float] = dataclasses.field(default_factory=list)
    #: ``in-process`` (:func:`run_graph`), or a layout of
    #: :func:`a2llm_ros.tools.rosgraph.graph_procs.run_graph_processes`.
    layout: str = "in-process"
    #: The node processes (:class:`a2llm_ros.tools.rosgraph.graph_procs.ProcessRecord`);
    #: empty in-process.
    processes: List[Any] = dataclasses.field(default_factory=list)
    #: This process (player and collector) as a ProcessRecord; None in-process.
    client: Any = None
    #: Monotonic time of the sidecar's time 0 (:func:`bag_origin`); None without one.
    bag_origin: Optional[float] = None

    @property
    def answered(self) -> List[TurnResult]:
        """Turns that produced speech audio."""
        return [t for t in self.turns if t.audio_sizes]

    def last_diagnostics(self) -> Dict[str, str]:
        return self.diagnostics[-1][2] if self.diagnostics else {}

    def logs_at(self, min_level: int, node: str = "a2llm_node") -> List[str]:
        """Log messages of graph node ``node`` (``""``: all) at ``min_level`` or above
        (rcl levels: 20 INFO, 30 WARN, 40 ERROR)."""
        return [m for _, level, m, name in self.logs
                if level >= min_level and name.endswith(node)]

    def lateness_ms(self) -> Dict[str, Optional[float]]:
        """Output lateness over the replay: receive time (ROS time) minus presentation stamp,
        ms (negative: early, ``output.lead_s`` ahead); max and mean for speech audio and
        for FLAME (``flame/frames`` and ``flame/chunks``, listening frames included)."""
        t0 = self.t_play_start if self.t_play_start is not None else -float("inf")
        audio = _late_ms([(t, s) for t, s, _, _ in self.audio], t0, self.t_end,
                         self.ros_offset_s)
        flame = _late_ms([(t, s) for t, s, _, _ in self.frames]
                         + [(t, s) for t, s, *_ in self.chunks], t0, self.t_end,
                         self.ros_offset_s)
        out: Dict[str, Optional[float]] = {}
        for name, values in (("audio", audio), ("flame", flame)):
            out[f"{name}_max_ms"] = float(values.max()) if len(values) else None
            out[f"{name}_mean_ms"] = float(values.mean()) if len(values) else None
        return out

    def resource_summary(self) -> Dict[str, float]:
        """CPU (mean/max %, 100 = one core) and RSS (start/peak/end MB) over the replay."""
        rows = [r for r in self.resources
                if self.t_play_start is None or r[0] >= self.t_play_start]
        rows = rows or self.resources
        if not rows:
            return {}
        cpu = np.array([r[1] for r in rows])
        rss = np.array([r[2] for r in rows])
        return {"cpu_mean_pct": float(cpu.mean()), "cpu_max_pct": float(cpu.max()),
                "rss_start_mb": float(rss[0]), "rss_peak_mb": float(rss.max()),
                "rss_end_mb": float(rss[-1])}


def _late_ms(rows: Sequence[Tuple[float, int]], t0: float, t1: float,
             ros_offset_s: float) -> np.ndarray:
    """Receive time (monotonic s + ``ros_offset_s`` = ROS time) minus stamp (ns), in ms,
    of the rows received in ``[t0, t1]``."""
    kept = [(t, s) for t, s in rows if t0 <= t <= t1]
    if not kept:
        return np.zeros(0)
    recv = np.array([t for t, _ in kept], np.float64) + ros_offset_s
    stamps = np.array([s for _, s in kept], np.int64)
    return 1000.0 * (recv - stamps / NS_PER_S)


# ----------------------------------------------------------------------------- sidecars, bags

def load_sidecar(sidecar) -> Optional[dict]:
    """A fixture sidecar from a dict, a JSON path, or ``<bag>.json`` next to a bag dir."""
    if sidecar is None or isinstance(sidecar, dict):
        return sidecar
    return json.loads(Path(sidecar).read_text())


def write_question_bag(bag_dir, questions: Sequence[Any], gap_s, lead_s: float = 0.5,
                       seed: int = 0, name: str = "questions") -> dict:
    """Write a ros-drivers 16 kHz bag: ``lead_s`` silence, then each question followed by
    its gap (``gap_s``: seconds, or one per question).  A question is a text (spoken by
    espeak-ng, see :func:`a2llm_ros.tools.bags.fixtures.speak`), a 16 kHz float wave, or a
    ``(text, wave)`` pair.  Writes ``<bag_dir>.json`` and returns the sidecar (fixture
    format)."""
    from a2llm_ros.tools.bags import fixtures as fx

    rng = np.random.default_rng(seed)
    gaps = [float(gap_s)] * len(questions) if np.isscalar(gap_s) else [float(g) for g in gap_s]
    parts, utterances, pos = [np.zeros(int(lead_s * SAMPLE_RATE))], [], int(lead_s * SAMPLE_RATE)
    for question, gap in zip(questions, gaps):
        if isinstance(question, str):
            wave, text = fx.speak(question, SAMPLE_RATE), question
        elif isinstance(question, tuple):
            text, wave = question[0], np.asarray(question[1], np.float64).reshape(-1)
        else:
            wave, text = np.asarray(question, np.float64).reshape(-1), ""
        utterances.append({"text": text, "answer_id": -1, "role": "question",
                           "onset_s": pos / SAMPLE_RATE,
                           "offset_s": (pos + len(wave)) / SAMPLE_RATE})
        silence = np.zeros(int(round(gap * SAMPLE_RATE)))
        parts += [wave, silence]
        pos += len(wave) + len(silence)
    audio = np.concatenate(parts)
    audio = audio + rng.normal(0.0, fx.NOISE_FLOOR_RMS, len(audio))
    fix = fx.FixtureAudio(name, audio[:, None], SAMPLE_RATE, utterances=utterances)
    bag = Path(bag_dir)
    if bag.exists():
        import shutil
        shutil.rmtree(bag)
    meta = fx.sidecar(fix, bag, fx.write_audio_bag(fix, bag))
    bag.with_name(bag.name + ".json").write_text(json.dumps(meta, indent=1))
    return meta


# ----------------------------------------------------------------------------- the run

def _node_parameters(cfg: GraphConfig, ns: str, audio_topics: Dict[str, str]) -> list:
    values = {"autostart": True, "model.checkpoint": cfg.checkpoint}
    values.update(audio_topics)
    values.update(cfg.params)
    return [Parameter(k, value=v) for k, v in values.items()]


def _cli_args(params_file: Optional[str]) -> Optional[List[str]]:
    if not params_file:
        return None
    from a2llm_ros.paths import config_file
    return ["--ros-args", "--params-file", config_file(params_file)]


def audio_topics(player_topics: Sequence[str], ns: str) -> Tuple[Dict[str, str], Dict]:
    """(a2llm_node audio parameters, bag remap) putting the bag's microphone in ``ns``."""
    from a2llm_ros.tools.bags import fixtures as fx
    remap = {t: join_topic(ns, t.lstrip("/")) for t in player_topics} if ns else {}
    params = {}
    if fx.RD_AUDIO_TOPIC in player_topics or ns:
        params["audio.topic"] = join_topic(ns, fx.RD_AUDIO_TOPIC.lstrip("/"))
        params["audio.info_topic"] = join_topic(ns, fx.RD_INFO_TOPIC.lstrip("/"))
    if fx.MG_AUDIO_TOPIC in player_topics:
        params["audio.topic"] = join_topic(ns, fx.MG_AUDIO_TOPIC.lstrip("/"))
    return params, remap


def domain_id() -> int:
    """ROS_DOMAIN_ID, else one derived from this process id (runs do not meet)."""
    env = os.environ.get("ROS_DOMAIN_ID", "")
    return int(env) if env.isdigit() else 1 + os.getpid() % 100


class _Graph:
    """The live objects of one run (built by :func:`run_graph`, torn down in its finally)."""

    def __init__(self, cfg: GraphConfig):
        self.cfg = cfg
        self.sidecar = load_sidecar(cfg.sidecar)
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id())
        self.executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS, context=self.ctx)
        self.spin_thread = threading.Thread(target=self.executor.spin, daemon=True,
                                            name="graph_executor")
        self.nodes: list = []
        self.node: Optional[A2llmNode] = None
        self.probe_log: List[dict] = []  # one record per turn (ProbeGenerator)
        self.probe_lock = threading.Lock()
        self.tester = None
        self.collector: Optional[Collector] = None
        self.recorder = None
        self.player: Optional[TimedPlayer] = None
        self.sampler = ResourceSampler(cfg.resource_period_s)
        self.recorded: Dict[str, int] = {}

    def _probe(self, generator) -> ProbeGenerator:
        """The node's turn generator (in the caller's wrapper, if any) wrapped in the probe."""
        if self.cfg.wrap_generator is not None:
            generator = self.cfg.wrap_generator(generator)
        return ProbeGenerator(generator, self.probe_log, self.probe_lock,
                              self.cfg.keep_questions)

    # -- start
    def start(self) -> None:
        cfg = self.cfg
        ns = "/" + cfg.namespace.strip("/") if cfg.namespace.strip("/") else ""
        self.spin_thread.start()
        self.sampler.start()
        self.tester = rclpy.create_node("a2llm_graph_run", namespace=ns or "/", context=self.ctx)
        self.executor.add_node(self.tester)
        audio_params, self.remap = audio_topics(sorted(bag_topics(cfg.bag)), ns)
        self.player = TimedPlayer(self.tester, cfg.bag, rate=cfg.rate, remap=self.remap,
                                  wait_for_subscribers=cfg.wait_for_subscribers_s)
        self.node = A2llmNode(namespace=ns or "/", context=self.ctx,
                              cli_args=_cli_args(cfg.params_file),
                              parameter_overrides=_node_parameters(cfg, ns, audio_params),
                              wrap_generator=self._probe)
        self.nodes.append(self.node)
        self.collector = self._make_collector(ns)
        self.executor.add_node(self.node)
        self._extra_nodes(ns)
        self._wait_active()
        if cfg.record:
            self._start_recorder(ns)

    def _make_collector(self, ns: str) -> Collector:
        from a2llm_ros.interfaces import detect_audio_flavour
        fmt = self.node.get_parameter("output.sample_format").value
        return Collector(self.tester, ns, detect_audio_flavour(), str(fmt),
                         self.cfg.keep_payloads, self.node.get_fully_qualified_name(),
                         self.cfg.retarget, markers=self.cfg.watch_markers)

    def _extra_nodes(self, ns: str) -> None:
        cli = _cli_args(self.cfg.params_file)
        if self.cfg.retarget:
            from a2llm_ros.ros.flame_retarget_node import FlameRetargetNode
            over = [Parameter(k, value=v) for k, v in self.cfg.retarget_params.items()]
            self.nodes.append(FlameRetargetNode(namespace=ns or "/", context=self.ctx,
                                                cli_args=cli, parameter_overrides=over))
        if self.cfg.preview:
            from a2llm_ros.ros.face_preview_node import FacePreviewNode
            over = [Parameter(k, value=v) for k, v in self.cfg.preview_params.items()]
            self.nodes.append(FacePreviewNode(namespace=ns or "/", context=self.ctx,
                                              cli_args=cli, parameter_overrides=over))
        for node in self.nodes[1:]:
            self.executor.add_node(node)

    def _wait_active(self) -> None:
        node = self.node
        deadline = time.monotonic() + self.cfg.activate_timeout_s
        while time.monotonic() < deadline:
            if node.lifecycle_state == "active":
                return
            if node.configure_error is not None:
                time.sleep(0.1)  # let the transition finish
                raise GraphStartError(f"a2llm_node failed to configure: "
                                      f"{node.configure_error}", node.lifecycle_state)
            time.sleep(0.02)
        raise GraphStartError(f"a2llm_node not active after {self.cfg.activate_timeout_s:.0f} s "
                              f"(state {node.lifecycle_state})", node.lifecycle_state)

    def output_topics(self, ns: str) -> List[str]:
        names = ["conversation_state", "response_text", "speech/audio_stamped",
                 "speech/audio_info", "flame/chunks", "/diagnostics"]
        cfg = self.node.runtime.cfg
        if cfg.output.publish_flame_frames:
            names.append("flame/frames")
        if cfg.output.publish_unstamped_audio and self.node.runtime.flavour != "mgonzs13":
            names.append("speech/audio")
        if self.cfg.retarget:
            names.append("face_commands")
        if self.cfg.preview:
            names.append("face_marker")
        return [join_topic(ns, n) for n in names]

    def _start_recorder(self, ns: str) -> None:
        from a2llm_ros.tools.rosgraph.bag_record import BagRecorder
        inputs = [self.remap.get(t, t) for t in self.player.topics]
        topics = inputs + self.output_topics(ns)
        path = Path(self.cfg.record)
        if path.exists():
            import shutil
            shutil.rmtree(path)
        self.recorder = BagRecorder(self.tester, path, topics)
        if not self.recorder.wait_for_topics(10.0):
            self.tester.get_logger().warning(f"recorder: no publisher yet for "
                                             f"{self.recorder.missing}")

    # -- run
    def play_and_wait(self) -> bool:
        """Play the bag, wait for the end; True when it timed out."""
        return replay_and_wait(self.cfg, self.sidecar, self.player, self.collector,
                               self._node_idle, self.node.runtime.cfg.vad.min_silence_ms)

    def _node_idle(self, states) -> bool:
        rt = self.node.runtime
        if rt is None:
            return True
        session = rt.session
        last = states[-1][1] if states else IDLE
        return (session.state == "idle" and session.queue_depth == 0 and last == IDLE
                and rt.out.depth == 0)

    # -- stop
    def teardown(self) -> None:
        self.sampler.stop()
        if self.recorder is not None:
            try:
                self.recorded = self.recorder.close()
            except Exception as err:  # noqa: BLE001
                print(f"graph_run: recorder close failed: {err!r}")
        if self.player is not None:
            self.player.destroy(ack_timeout=0.5)
        # Stop spinning before anything is destroyed: an entity with QoS-event handlers
        # destroyed beside a spinning executor can kill its thread (InvalidHandle).
        self.executor.shutdown(timeout_sec=5.0)
        self.spin_thread.join(timeout=5.0)
        if self.collector is not None and self.tester is not None:
            self.collector.destroy(self.tester)
        for node in reversed(self.nodes):
            try:
                node.destroy_node()
            except Exception as err:  # noqa: BLE001
                print(f"graph_run: destroying {node.get_name()} failed: {err!r}")
        if self.tester is not None:
            self.tester.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def prime_audio_info(player: BagPlayer, bag) -> None:
    """Publish the bag's leading AudioInfo (see :attr:`GraphConfig.prime_info`)."""
    from contextlib import closing

    from a2llm_ros.tools.bags import fixtures as fx
    from a2llm_ros.tools.bags.io import read_bag_raw
    if fx.RD_INFO_TOPIC not in player.topics:
        return
    with closing(read_bag_raw(bag, [fx.RD_INFO_TOPIC, fx.RD_AUDIO_TOPIC])) as it:
        topic, _, _, raw = next(it, (None, None, None, None))
    if topic == fx.RD_INFO_TOPIC:
        player.publisher(topic).publish(raw)
        time.sleep(0.2)


def expected_turns(cfg: GraphConfig, sidecar: Optional[dict]) -> Optional[int]:
    """Turns to wait for: :attr:`GraphConfig.expected_turns`, else the sidecar's utterances."""
    if cfg.expected_turns is None and sidecar is not None:
        return len(sidecar.get("utterances", []))
    return cfg.expected_turns


def replay_and_wait(cfg: GraphConfig, sidecar: Optional[dict], player: BagPlayer,
                    collector: Collector, idle: Callable[[list], bool],
                    min_silence_ms: float) -> bool:
    """Play the bag; after it ended, wait until the expected turns ended and the node is
    ``idle(states)``, or it stayed idle :data:`IDLE_GRACE_S` beyond the end-pointing
    silence; then :attr:`GraphConfig.settle_s`.  True when :attr:`GraphConfig.timeout_s`
    ran out."""
    if cfg.prime_info:
        prime_audio_info(player, cfg.bag)
    player.start()
    deadline = time.monotonic() + cfg.timeout_s
    expected = expected_turns(cfg, sidecar)
    idle_since = None
    grace = IDLE_GRACE_S + min_silence_ms / 1000.0
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if not player.done:
            continue
        states = collector.snapshot_states()
        is_idle = idle(states)
        idle_since = (idle_since or time.monotonic()) if is_idle else None
        if is_idle and expected is not None and _ended_turns(states) >= expected:
            break
        if idle_since is not None and time.monotonic() - idle_since >= grace:
            break
    else:
        return True
    time.sleep(cfg.settle_s)
    return False


def _ended_turns(states) -> int:
    """Turns that reached THINKING and then IDLE or INTERRUPTED."""
    thinking = {k for _, s, k, _ in states if s == THINKING}
    ended = set()
    for _, s, k, r in states:
        if k in thinking and (s == INTERRUPTED or (s == IDLE and r not in NON_ANSWER_IDLE)):
            ended.add(k)
    return len(ended)


def run_graph(cfg: GraphConfig) -> GraphResult:
    """Run the graph on ``cfg.bag`` (see the module docstring); raises
    :class:`GraphStartError` when the node does not come up.

    The process's GIL switch interval is the node executables' default
    (:data:`a2llm_ros.ros.spin.DEFAULT_GIL_SWITCH_MS`) during the run."""
    import sys

    from a2llm_ros.ros.spin import DEFAULT_GIL_SWITCH_MS
    switch = sys.getswitchinterval()
    sys.setswitchinterval(DEFAULT_GIL_SWITCH_MS / 1000.0)
    try:
        return _run_graph(cfg)
    finally:
        sys.setswitchinterval(switch)


def _run_graph(cfg: GraphConfig) -> GraphResult:
    graph = _Graph(cfg)
    try:
        graph.start()
        node = graph.node
        warmup, version = node.runtime.warmup_s, int(node.runtime.layout.version)
        node_cfg, kind = node.runtime.cfg, _backend_kind(node.runtime.backend)
        timed_out = graph.play_and_wait()
        graph.sampler.sample()
        values = node.diagnostics_values()
        lifecycle = node.lifecycle_state
        alive = all(t.is_alive() for t in node.runtime.threads) if node.runtime else False
        t_end = time.monotonic()
    finally:
        graph.teardown()
    res = _result(graph, cfg, timed_out, t_end, values, lifecycle, alive, kind, node_cfg,
                  warmup)
    res.flame_version = version
    return res


def _backend_kind(backend) -> str:
    return str(getattr(backend, "kind", "") or type(backend).__name__)


def _result(graph: _Graph, cfg: GraphConfig, timed_out: bool, t_end: float,
            values: Dict[str, str], lifecycle: str, alive: bool, kind: str, node_cfg,
            warmup: float) -> GraphResult:
    col, player = graph.collector, graph.player
    wall0 = player.wall0
    utt_ends = utterance_ends(graph.sidecar, player, wall0, cfg.rate)
    res = GraphResult(
        config=cfg, turns=[], t_play_start=wall0,
        t_play_end=(wall0 + player.stats.wall_s) if wall0 is not None else None,
        t_end=t_end, timed_out=timed_out, play_stats=player.stats, utterance_ends=utt_ends,
        states=list(col.states), texts=list(col.texts), audio=list(col.audio),
        frames=list(col.frames), chunks=list(col.chunks), diagnostics=list(col.diagnostics),
        logs=list(col.logs), face_commands=col.face_commands, markers=list(col.markers),
        resources=list(graph.sampler.samples), node_values=values, lifecycle_state=lifecycle,
        threads_alive=alive, recorded=dict(graph.recorded), backend_kind=kind,
        node_config=node_cfg, probe=list(graph.probe_log),
        ros_offset_s=time.time() - time.monotonic(), warmup_s=warmup,
        bag_origin=bag_origin(graph.sidecar, player, wall0, cfg.rate))
    res.turns = build_turns(res, node_cfg.vad.min_silence_ms / 1000.0)
    return res


def bag_origin(sidecar, player, wall0, rate) -> Optional[float]:
    """Monotonic time (s) of the sidecar's time 0: a sidecar time ``x_s`` was played at
    ``origin + x_s / rate``.  None without a sidecar or before playback."""
    if not sidecar or wall0 is None:
        return None
    t0_ns = int(sidecar.get("t0_ns", player.bag_start_ns))
    return wall0 + (t0_ns - player.start_ns) / NS_PER_S / rate


def utterance_ends(sidecar, player, wall0, rate) -> List[Tuple[float, str]]:
    """(monotonic s, text) of every sidecar utterance's end (``offset_s``)."""
    origin = bag_origin(sidecar, player, wall0, rate)
    if origin is None:
        return []
    return [(origin + float(utt["offset_s"]) / rate, str(utt.get("text", "")))
            for utt in sidecar.get("utterances", [])]


# ----------------------------------------------------------------------------- analysis

def build_turns(res: GraphResult, min_silence_s: float) -> List[TurnResult]:
    """Per-turn records of every turn that reached THINKING, in turn order."""
    by_turn: Dict[int, List[Tuple[float, int, str]]] = {}
    for t, s, k, r in res.states:
        by_turn.setdefault(k, []).append((t, s, r))
    ids = sorted(k for k, rows in by_turn.items() if any(s == THINKING for _, s, _ in rows))
    turns = []
    used = set()
    for k in ids:
        turn = _turn_states(k, by_turn[k])
        _match_question(turn, res.utterance_ends, used, min_silence_s)
        turns.append(turn)
    _assign_outputs(turns, res)
    probes = {p["turn_id"]: p for p in res.probe}
    for turn in turns:
        turn.gen = probes.get(turn.turn_id)
    return turns


def _turn_states(k: int, rows) -> TurnResult:
    turn = TurnResult(turn_id=k, states=rows)
    for t, s, r in rows:
        if s == LISTENING and turn.t_listening is None:
            turn.t_listening = t
        elif s == THINKING and turn.t_thinking is None:
            turn.t_thinking = t
        elif s == SPEAKING and turn.t_speaking is None:
            turn.t_speaking = t
        elif turn.t_thinking is not None and turn.t_end is None and (
                s == INTERRUPTED or (s == IDLE and r not in NON_ANSWER_IDLE)):
            turn.t_end, turn.end_state, turn.end_reason = t, s, r
    return turn


def _match_question(turn: TurnResult, ends, used: set, min_silence_s: float) -> None:
    """The latest unused utterance end before THINKING (else THINKING - min_silence)."""
    best = None
    for i, (t, text) in enumerate(ends):
        if i not in used and t <= turn.t_thinking + 0.05:
            best = i
    if best is not None:
        used.add(best)
        turn.question_end, turn.question_text = ends[best]
    elif not ends:
        turn.question_end = turn.t_thinking - min_silence_s


def _assign_outputs(turns: List[TurnResult], res: GraphResult) -> None:
    """Texts and frames by turn id; audio by time (between THINKING and the next THINKING)."""
    index = {t.turn_id: t for t in turns}
    for t, k, text, final in res.texts:
        turn = index.get(k)
        if turn is None:
            continue
        turn.n_final += int(final)
        turn.text += text
        if text and turn.first_text is None:
            turn.first_text = t
    bounds = [t.t_thinking for t in turns] + [float("inf")]
    for i, turn in enumerate(turns):
        rows = [a for a in res.audio if bounds[i] <= a[0] < bounds[i + 1]]
        turn.audio_recv = [a[0] for a in rows]
        turn.audio_stamps = [a[1] for a in rows]
        turn.audio_sizes = [a[2] for a in rows]
        turn.first_audio = rows[0][0] if rows else None
        if rows and rows[0][3] is not None:
            turn.audio = np.concatenate([a[3] for a in rows]).astype(np.float32)
        frames = [f for f in res.frames if f[2] == turn.turn_id]
        frames.sort(key=lambda f: f[1])
        turn.frame_stamps = np.array([f[1] for f in frames], np.int64)
        turn.frame_recv = np.array([f[0] for f in frames])
        if frames and frames[0][3] is not None:
            turn.frames = np.stack([f[3] for f in frames])
        chunks = [c for c in res.chunks if c[2] == turn.turn_id and c[4] == SOURCE_SPEECH]
        turn.chunk_indices = [c[3] for c in chunks]
        turn.chunk_sizes = [c[5] for c in chunks]
        turn.chunk_frames = sum(turn.chunk_sizes)
        first = [c[0] for c in chunks] + [f[0] for f in frames]
        turn.first_flame = min(first) if first else None


def turn_rows(res: GraphResult) -> List[Dict[str, Any]]:
    """Rows for :func:`a2llm_ros.tools.demo.report.write_latency_md`
    (times since playback start)."""
    t0 = res.t_play_start or 0.0
    rows = []
    for turn in res.turns:
        skew = turn.stamp_skew_ms()
        rows.append({
            "turn": turn.turn_id,
            "question_end_s": None if turn.question_end is None else turn.question_end - t0,
            "endpoint_ms": turn.latency_ms("t_thinking"),
            "first_text_ms": turn.latency_ms("first_text"),
            "first_audio_ms": turn.latency_ms("first_audio"),
            "first_flame_ms": turn.latency_ms("first_flame"),
            "rtf": turn.generation_rtf(),
            "skew_ms": float(np.mean(skew)) if len(skew) else None,
            "answer_s": turn.audio_s,
            "end": ("interrupted" if turn.interrupted
                    else turn.end_reason or "unfinished"),
        })
    return rows
