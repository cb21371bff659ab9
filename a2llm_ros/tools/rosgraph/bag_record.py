"""Record live ROS 2 topics into a rosbag2 bag (MCAP by default, or sqlite3) with rclpy.

``a2llm bag record TOPIC... | --all`` / ``python -m a2llm_ros.tools.rosgraph.bag_record`` and,
in-process, ``BagRecorder(node, path, topics)`` ... ``.close()``.

* Subscriptions are ``raw=True``: the CDR bytes go to the bag untouched through
  :class:`a2llm_ros.tools.bags.io.BagWriter`, which writes the standard rosbag2
  layout (``metadata.yaml``, type names ``pkg/msg/Name``, embedded ``ros2msg``
  definitions, RIHS01 hashes, offered QoS), so ``ros2 bag info/play`` and
  :func:`a2llm_ros.tools.bags.io.read_bag` read it.
* Types: the writer's typestore holds the ROS 2 distro's core messages, the
  project's ``a2llm_ros/msg/*`` and the installed ``audio_common_msgs``
  flavour; any other type is registered from its ``share/<pkg>/msg/*.msg``
  (ament index) with its dependencies.  A topic whose definition cannot be
  found is not recorded (warning).
* A topic is subscribed once a publisher for it is discovered (a timer polls
  the graph every ``discovery_period`` seconds; :meth:`BagRecorder.discover`
  polls at once).  Subscription QoS follows the publishers as ``ros2 bag
  record`` does: best effort if any publisher is best effort, transient local
  if all are (so latched topics such as ``/audio/audio_info`` published before
  the recorder started are still recorded), depth :data:`SUBSCRIPTION_DEPTH`.
* Offered QoS stored in the metadata: one profile per topic (the first
  publisher's reliability/durability; history/depth the graph reports as
  unknown become keep-last 1 for transient local, keep-last 10 otherwise).
  Several differing publishers are merged into that one profile
  (:class:`BagWriter` stores one profile per topic).
* Timestamps: the middleware's receive time (``received_timestamp``, system
  clock), or the node clock (``/clock`` time) when the node has
  ``use_sim_time`` set.
* ``--all`` skips ``/rosout``, ``/parameter_events`` and hidden topics
  (a path part starting with ``_``); ``exclude`` takes a regular expression.
"""
from __future__ import annotations

import argparse
import datetime
import queue
import re
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.typesys import get_types_from_msg

from a2llm_ros.tools.bags import types as T
from a2llm_ros.tools.bags.io import DEFAULT_STORAGE, BagWriter, make_qos
from a2llm_ros.tools.rosgraph.bag_play import message_class, no_sub_events

DEFAULT_DEPTH = 10
LATCHED_DEPTH = 1
#: Subscription queue depth: room for bursts while the executor is busy (keep-last drops).
SUBSCRIPTION_DEPTH = 100
DISCOVERY_PERIOD_S = 0.5
NODE_NAME = "a2llm_bag_recorder"
SYSTEM_TOPICS = ("/rosout", "/parameter_events")
_PRIMITIVES = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16",
               "uint16", "int32", "uint32", "int64", "uint64", "string", "wstring"}


# ---------------------------------------------------------------------- types

def find_msg_file(package: str, name: str) -> Optional[Path]:
    """``share/<package>/msg/<name>.msg`` from the ament index, or None."""
    try:
        from ament_index_python.packages import (PackageNotFoundError,
                                                 get_package_share_directory)
    except ImportError:
        return None
    try:
        path = Path(get_package_share_directory(package)) / "msg" / f"{name}.msg"
    except PackageNotFoundError:
        return None
    return path if path.exists() else None


def _msg_dependencies(text: str, package: str) -> List[str]:
    """Nested type names ``pkg/msg/Name`` a ``.msg`` text refers to."""
    deps = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if len(line.split()) < 2:
            continue
        if re.match(r"^\S+\s+[A-Z][A-Z0-9_]*\s*=", line):
            continue  # constant
        base = re.split(r"[\[<]", line.split()[0])[0]
        if base in _PRIMITIVES:
            continue
        if base == "Header":
            deps.append("std_msgs/msg/Header")
        elif "/" in base:
            parts = base.split("/")
            deps.append(f"{parts[0]}/msg/{parts[-1]}")
        else:
            deps.append(f"{package}/msg/{base}")
    return deps


def register_type(store, msgtype: str) -> bool:
    """Make ``msgtype`` (and what it nests) known to ``store`` from ``.msg`` files.

    True when the type is (now) known; False when a definition is missing.
    """
    if msgtype in store.fielddefs:
        return True
    package, _, name = msgtype.split("/")
    path = find_msg_file(package, name)
    if path is None:
        return False
    text = path.read_text(encoding="utf8")
    if not all(register_type(store, dep) for dep in _msg_dependencies(text, package)):
        return False
    store.register(get_types_from_msg(text, msgtype))
    return True


def _installed_flavour() -> str:
    from a2llm_ros.interfaces import detect_audio_flavour

    flavour = detect_audio_flavour()
    return flavour if flavour in T.FLAVOURS else T.ROS_DRIVERS


# ---------------------------------------------------------------------- QoS

def offered_qos(endpoints) -> tuple:
    """(rosbags Qos to store, rclpy QoSProfile to subscribe with) for publisher endpoints."""
    profiles = [e.qos_profile for e in endpoints]
    any_best_effort = any(p.reliability == ReliabilityPolicy.BEST_EFFORT for p in profiles)
    all_latched = bool(profiles) and all(
        p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in profiles)
    first = profiles[0]
    depth = int(first.depth) if first.history == HistoryPolicy.KEEP_LAST else 0
    if depth <= 0:
        depth = LATCHED_DEPTH if all_latched else DEFAULT_DEPTH
    stored = make_qos(
        "best_effort" if first.reliability == ReliabilityPolicy.BEST_EFFORT else "reliable",
        "transient_local" if first.durability == DurabilityPolicy.TRANSIENT_LOCAL
        else "volatile", depth)
    depths = [int(p.depth) for p in profiles if p.history == HistoryPolicy.KEEP_LAST]
    subscribe = QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=max([SUBSCRIPTION_DEPTH] + depths),
        reliability=(ReliabilityPolicy.BEST_EFFORT if any_best_effort
                     else ReliabilityPolicy.RELIABLE),
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if all_latched
                    else DurabilityPolicy.VOLATILE))
    return stored, subscribe


# ---------------------------------------------------------------------- recorder

def _absolute(topic: str) -> str:
    return topic if topic.startswith("/") else "/" + topic


def default_bag_name(now: Optional[datetime.datetime] = None) -> str:
    """``rosbag2_YYYY_MM_DD-HH_MM_SS`` as ``ros2 bag record`` names bags."""
    return (now or datetime.datetime.now()).strftime("rosbag2_%Y_%m_%d-%H_%M_%S")


class _WriterThread:
    """Owns a :class:`BagWriter` on one thread (sqlite3 objects are bound to their thread)
    and applies queued calls in order; callbacks only enqueue."""

    def __init__(self, factory):
        self.errors: List[str] = []
        self._queue: "queue.Queue" = queue.Queue()
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(factory,), daemon=True,
                                        name="a2llm_bag_writer")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self, factory) -> None:
        try:
            writer = factory()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the constructor
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            item = self._queue.get()
            if item is None:
                break
            method, args = item
            try:
                getattr(writer, method)(*args)
            except Exception as exc:  # noqa: BLE001 - reported by BagRecorder.close
                self.errors.append(f"{method}{args[:1]}: {exc}")
        writer.close()

    def call(self, method: str, *args) -> None:
        """Queue ``writer.<method>(*args)``."""
        self._queue.put((method, args))

    def close(self) -> None:
        """Apply everything queued, close the bag and end the thread."""
        self._queue.put(None)
        self._thread.join()


class BagRecorder:
    """Record ``topics`` (or every topic with ``all_topics=True``) seen by ``node`` into
    a new bag directory ``path``.

    The node must be spun by an executor for messages (and the discovery timer)
    to arrive.  :meth:`close` stops recording and finishes the bag (also on
    ``with``-exit).  ``counts`` maps topic -> messages written so far.
    """

    def __init__(self, node: Node, path, topics: Optional[Iterable[str]] = None, *,
                 all_topics: bool = False, storage: str = DEFAULT_STORAGE,
                 distro: str = T.DEFAULT_DISTRO, exclude: Optional[str] = None,
                 discovery_period: float = DISCOVERY_PERIOD_S,
                 flavour: Optional[str] = None):
        if not all_topics and not topics:
            raise ValueError("give topics or all_topics=True")
        self.node, self.path = node, Path(path)
        self.all_topics = bool(all_topics)
        self.topics = [] if topics is None else [_absolute(t) for t in topics]
        self.exclude = re.compile(exclude) if exclude else None
        self.store = T.new_typestore(flavour or _installed_flavour(), distro)
        self.writer = _WriterThread(lambda: BagWriter(
            self.path, storage=storage, distro=distro, typestore=self.store,
            custom_data={"recorder": "a2llm_ros.tools.rosgraph.bag_record"}))
        self.counts: Dict[str, int] = {}
        self.types: Dict[str, str] = {}
        self.skipped: Dict[str, str] = {}
        self._subs: Dict[str, object] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._sim_time = self._uses_sim_time()
        self.discover()
        self._timer = node.create_timer(discovery_period, self.discover)

    def _uses_sim_time(self) -> bool:
        try:
            return bool(self.node.get_parameter("use_sim_time").value)
        except Exception:  # noqa: BLE001 - parameter undeclared on exotic nodes
            return False

    # ------------------------------------------------------------------ discovery

    def _wanted(self, name: str) -> bool:
        if self.exclude is not None and self.exclude.search(name):
            return False
        if name in self.topics:
            return True
        if not self.all_topics:
            return False
        hidden = any(part.startswith("_") for part in name.split("/"))
        return not hidden and name not in SYSTEM_TOPICS

    def discover(self) -> List[str]:
        """Subscribe to every wanted topic that now has a publisher; returns new topics."""
        new = []
        with self._lock:
            if self._closed:
                return new
            for name, types in self.node.get_topic_names_and_types():
                if name in self._subs or name in self.skipped or not self._wanted(name):
                    continue
                endpoints = self.node.get_publishers_info_by_topic(name)
                if not endpoints or not types:
                    continue
                if self._subscribe(name, types[0], endpoints):
                    new.append(name)
        return new

    def _subscribe(self, name: str, msgtype: str, endpoints) -> bool:
        log = self.node.get_logger()
        try:
            cls = message_class(msgtype)
        except (ImportError, AttributeError, ValueError) as exc:
            self.skipped[name] = f"type {msgtype} not importable ({exc})"
            log.warning(f"not recording {name}: {self.skipped[name]}")
            return False
        if not register_type(self.store, msgtype):
            self.skipped[name] = f"no .msg definition found for {msgtype}"
            log.warning(f"not recording {name}: {self.skipped[name]}")
            return False
        _check_hash(log, name, msgtype, self.store.hash_rihs01(msgtype), endpoints)
        stored, sub_qos = offered_qos(endpoints)
        self.writer.call("add_topic", name, msgtype, stored)
        self.types[name], self.counts[name] = msgtype, 0
        self._subs[name] = self.node.create_subscription(
            cls, name, partial(self._on_message, name), sub_qos, raw=True,
            event_callbacks=no_sub_events())
        return True

    @property
    def missing(self) -> List[str]:
        """Requested topics not subscribed (yet)."""
        return [t for t in self.topics if t not in self._subs]

    @property
    def subscribed(self) -> List[str]:
        """Topics being recorded."""
        return sorted(self._subs)

    def wait_for_topics(self, timeout: float, topics: Optional[Iterable[str]] = None) -> bool:
        """Poll discovery until ``topics`` (default: the requested ones) are all subscribed
        and matched to a publisher; False on timeout.  With ``all_topics`` pass the topics
        you need."""
        wanted = self.topics if topics is None else [_absolute(t) for t in topics]
        deadline = time.monotonic() + timeout
        while True:
            self.discover()
            if all(t in self._subs and self._subs[t].get_publisher_count() > 0
                   for t in wanted):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    # ------------------------------------------------------------------ messages

    def _on_message(self, topic: str, raw: bytes, info) -> None:
        """Subscription callback (two arguments after ``topic``: rclpy passes MessageInfo)."""
        stamp = 0
        if not self._sim_time:
            stamp = int(info.get("received_timestamp") or 0)
        if stamp <= 0:
            stamp = self.node.get_clock().now().nanoseconds
        with self._lock:
            if self._closed:
                return
            self.writer.call("write_raw", topic, bytes(raw), stamp)
            self.counts[topic] += 1

    @property
    def message_count(self) -> int:
        return sum(self.counts.values())

    # ------------------------------------------------------------------ closing

    def close(self) -> Dict[str, int]:
        """Stop recording, finish the bag; returns topic -> message count."""
        with self._lock:
            if self._closed:
                return dict(self.counts)
            self._closed = True
            for sub in self._subs.values():
                _quietly(self.node.destroy_subscription, sub)
            _quietly(self.node.destroy_timer, self._timer)
            self.writer.close()
        for error in self.writer.errors:
            self.node.get_logger().error(f"bag write failed: {error}")
        for topic in self.missing:
            self.node.get_logger().warning(f"{topic}: no publisher seen, not in the bag")
        return dict(self.counts)

    def __enter__(self) -> "BagRecorder":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _check_hash(log, topic: str, msgtype: str, ours: str, endpoints) -> None:
    """Warn when a publisher's RIHS01 type hash differs from the definition stored in the bag."""
    theirs = {str(e.topic_type_hash) for e in endpoints}
    theirs = {h for h in theirs if h.startswith("RIHS01_")}
    if theirs and theirs != {ours}:
        log.warning(f"{topic}: publisher type hash {sorted(theirs)} differs from the stored "
                    f"{msgtype} definition ({ours}); readers may decode it wrongly")


def _quietly(func, *args) -> None:
    """Destroy an rclpy entity; ignore errors after the context was shut down."""
    try:
        func(*args)
    except Exception:  # noqa: BLE001 - shutdown races are harmless here
        pass


# ---------------------------------------------------------------------- command line

def run(args) -> int:
    """Record from parsed arguments until ``--duration`` or SIGINT/SIGTERM."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    if not args.all and not args.topics:
        print("a2llm bag record: give topics or --all", file=sys.stderr)
        return 2
    out = Path(args.output or default_bag_name())
    if out.exists():
        print(f"a2llm bag record: {out} exists", file=sys.stderr)
        return 2
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(NODE_NAME)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    recorder = None
    try:
        recorder = BagRecorder(node, out, args.topics, all_topics=args.all,
                               storage=args.storage, distro=args.distro, exclude=args.exclude)
        print(f"recording to {out} ({args.storage}); Ctrl-C to stop", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            executor.spin_once(timeout_sec=0.05)
    finally:
        counts = recorder.close() if recorder is not None else {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    print(f"wrote {out}: {sum(counts.values())} messages on {len(counts)} topics")
    for topic, count in sorted(counts.items()):
        print(f"  {topic:32s} {recorder.types[topic]:44s} {count:7d}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m a2llm_ros.tools.rosgraph.bag_record [TOPIC...] [--all] [-o BAG] ...``."""
    from a2llm_ros.tools.commands.bag import add_record_arguments

    parser = argparse.ArgumentParser(prog="a2llm_bag_record",
                                     description=__doc__.splitlines()[0])
    add_record_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
