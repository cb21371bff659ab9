"""Replay a rosbag2 bag (MCAP or sqlite3) onto a live ROS 2 graph with rclpy.

``a2llm bag play BAG`` / ``python -m a2llm_ros.tools.rosgraph.bag_play BAG`` and, in-process,
:func:`play_bag` or :class:`BagPlayer`.

* Messages are read with :func:`a2llm_ros.tools.bags.io.read_bag_raw` and published as
  the stored CDR bytes (``Publisher.publish(bytes)``), so nothing is decoded on
  the way; the topic's rclpy message class (imported from the recorded type
  name, e.g. ``a2llm_ros/msg/FlameChunk`` -> ``a2llm_ros.msg.FlameChunk``) only
  selects the type support.  Topics whose type is not importable are skipped
  with a warning.
* Timing: message ``i`` is published at ``t_wall0 + (stamp_i - stamp_start) /
  rate``, with ``stamp_start`` = the bag's first message + ``start_offset``.
  ``loop`` replays from ``stamp_start`` again (a fresh wall origin per pass).
* ``clock=True`` publishes ``rosgraph_msgs/Clock`` on ``/clock`` at
  ``clock_hz`` (bag time matching the current wall time), for nodes that run
  with ``use_sim_time``.  The clock publisher is reliable, volatile, depth 1,
  which every ``/clock`` subscriber accepts.
* QoS per topic is rebuilt from the ``offered_qos_profiles`` in the bag's
  metadata: transient local when every recorded offer was (e.g.
  ``/audio/audio_info``), best effort when every offer was, else reliable;
  depth = the largest recorded depth (history/depth the graph reported as
  unknown count as depth 1 for transient local topics, else 10).
* ``wait_for_subscribers`` (seconds) holds the start until every publisher has
  a matched subscriber (or the time is up), then :data:`SETTLE_S` more, because
  the subscriber side may match the publisher a moment after the publisher
  side sees it: DDS discovery takes a moment and ``ros2 bag play`` has no such
  wait, so early messages can otherwise go nowhere.  ``delay`` then waits a
  fixed time.
* Publishers (and the recorder's subscriptions) are made without QoS-event
  handlers (:func:`no_pub_events`), so no "incompatible QoS" warning is logged
  by them: with handlers, destroying them beside a spinning rclpy 9 executor
  can kill that executor's thread (``InvalidHandle``).
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence

import rclpy
from rclpy.duration import Duration
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import QosDurability, QosHistory, QosReliability
from rosgraph_msgs.msg import Clock

from a2llm_ros.tools.bags.io import BagTopic, bag_summary, bag_topics, read_bag_raw
from a2llm_ros.tools.commands.bag import DEFAULT_CLOCK_HZ
from a2llm_ros.constants import NS_PER_S

CLOCK_TOPIC = "/clock"
DEFAULT_DEPTH = 10
LATCHED_DEPTH = 1
NODE_NAME = "a2llm_bag_player"
#: Longest wait in destroy() for reliable subscribers to acknowledge the last messages.
ACK_TIMEOUT_S = 2.0
#: Extra wait after every publisher saw a subscriber (reader-side matching lags).
SETTLE_S = 0.2


def message_class(msgtype: str):
    """rclpy message class of ``pkg/msg/Name`` (ImportError/AttributeError if absent)."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def no_pub_events() -> PublisherEventCallbacks:
    """No QoS-event handlers: rclpy 9's executor raises InvalidHandle when an entity's
    event handler is destroyed from another thread while it spins (the player and the
    recorder are made and destroyed next to a spinning executor)."""
    return PublisherEventCallbacks(use_default_callbacks=False)


def no_sub_events() -> SubscriptionEventCallbacks:
    """Subscription counterpart of :func:`no_pub_events`."""
    return SubscriptionEventCallbacks(use_default_callbacks=False)


def playback_qos(topic: BagTopic) -> QoSProfile:
    """rclpy QoS to offer for a recorded topic (see the module docstring)."""
    offers = list(topic.qos)
    latched = bool(offers) and all(q.durability == QosDurability.TRANSIENT_LOCAL
                                   for q in offers)
    best_effort = bool(offers) and all(q.reliability == QosReliability.BEST_EFFORT
                                       for q in offers)
    depths = [int(q.depth) for q in offers
              if q.history == QosHistory.KEEP_LAST and int(q.depth) > 0]
    depth = max(depths) if depths else (LATCHED_DEPTH if latched else DEFAULT_DEPTH)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


@dataclass
class PlayStats:
    """What one :meth:`BagPlayer.play` did."""

    published: Dict[str, int] = field(default_factory=dict)  # topic -> messages
    clock_ticks: int = 0
    loops: int = 0
    wall_s: float = 0.0
    max_lateness_s: float = 0.0  # worst publish time behind schedule
    skipped_topics: Dict[str, str] = field(default_factory=dict)  # topic -> reason
    matched: bool = True  # every publisher had a subscriber before the start


class BagPlayer:
    """Publish a bag's messages on ``node`` with the recorded timing.

    ``BagPlayer(node, path, rate=1.0, loop=False, clock=False, clock_hz=100,
    topics=None, start_offset=0.0, delay=0.0, wait_for_subscribers=0.0,
    remap=None, max_loops=None)``.  :meth:`play` blocks; :meth:`start` runs it
    on a thread (then :meth:`wait`, :meth:`stop`).  Publishing does not need
    the node to be spun.  :meth:`destroy` removes the publishers.
    """

    def __init__(self, node: Node, path, *, rate: float = 1.0, loop: bool = False,
                 clock: bool = False, clock_hz: float = DEFAULT_CLOCK_HZ,
                 topics: Optional[Iterable[str]] = None, start_offset: float = 0.0,
                 delay: float = 0.0, wait_for_subscribers: float = 0.0,
                 remap: Optional[Mapping[str, str]] = None, max_loops: Optional[int] = None):
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if clock and clock_hz <= 0:
            raise ValueError(f"clock_hz must be > 0, got {clock_hz}")
        self.node, self.path = node, Path(path)
        if not (self.path / "metadata.yaml").exists():
            raise FileNotFoundError(f"{self.path} is not a rosbag2 directory (no metadata.yaml)")
        self.rate, self.loop, self.max_loops = float(rate), bool(loop), max_loops
        self.clock_period = 1.0 / clock_hz if clock else None
        self.delay, self.wait_s = float(delay), float(wait_for_subscribers)
        self.remap = dict(remap or {})
        summary = bag_summary(self.path)
        self.bag_start_ns = int(summary["start_ns"])
        self.bag_end_ns = self.bag_start_ns + int(summary["duration_ns"])
        self.start_ns = self.bag_start_ns + int(round(start_offset * NS_PER_S))
        self.stats = PlayStats()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._publishers = self._make_publishers(topics)
        self._clock_pub = (node.create_publisher(Clock, CLOCK_TOPIC, QoSProfile(depth=1),
                                                 event_callbacks=no_pub_events())
                           if clock else None)

    # ------------------------------------------------------------------ setup

    def _make_publishers(self, topics: Optional[Iterable[str]]) -> dict:
        recorded = bag_topics(self.path)
        wanted = set(recorded) if topics is None else set(topics)
        for missing in sorted(wanted - set(recorded)):
            self.stats.skipped_topics[missing] = "not in the bag"
        pubs = {}
        for name in sorted(wanted & set(recorded)):
            info = recorded[name]
            try:
                cls = message_class(info.msgtype)
            except (ImportError, AttributeError, ValueError) as exc:
                reason = f"type {info.msgtype} not importable ({exc})"
                self.stats.skipped_topics[name] = reason
                self.node.get_logger().warning(f"skipping {name}: {reason}")
                continue
            pubs[name] = self.node.create_publisher(cls, self.remap.get(name, name),
                                                    playback_qos(info),
                                                    event_callbacks=no_pub_events())
        return pubs

    @property
    def topics(self) -> Sequence[str]:
        """Bag topics that will be published (before remapping)."""
        return sorted(self._publishers)

    def publisher(self, topic: str):
        """The rclpy publisher of bag ``topic``."""
        return self._publishers[topic]

    def wait_for_matched(self, timeout: float) -> bool:
        """Wait until every publisher has a subscriber; False when ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            if all(p.get_subscription_count() > 0 for p in self._publishers.values()):
                self._stop.wait(SETTLE_S)
                return True
            if time.monotonic() >= deadline:
                return False
            self._stop.wait(0.01)
        return False

    # ------------------------------------------------------------------ playback

    def play(self) -> PlayStats:
        """Play (all loops) and return the statistics; :meth:`stop` ends it early."""
        started = time.monotonic()
        if self.wait_s > 0:
            self.stats.matched = self.wait_for_matched(self.wait_s)
            if not self.stats.matched:
                self.node.get_logger().warning(
                    f"not every topic had a subscriber after {self.wait_s:.1f} s; playing")
        if self.delay > 0:
            self._stop.wait(self.delay)
        while not self._stop.is_set():
            self._play_once()
            self.stats.loops += 1
            if not self.loop or (self.max_loops and self.stats.loops >= self.max_loops):
                break
        self.stats.wall_s = time.monotonic() - started
        return self.stats

    def _play_once(self) -> None:
        names = list(self._publishers)
        if not names:
            return
        with closing(read_bag_raw(self.path, names)) as reader:
            records = (r for r in reader if r[2] >= self.start_ns)
            first = next(records, None)  # open the bag before the wall clock starts
            if first is None:
                return
            wall0 = time.monotonic()
            self._tick_clock(wall0, self.start_ns)
            self._next_tick = wall0 + (self.clock_period or 0.0)
            last_ns = self.start_ns
            for topic, _, stamp, raw in chain([first], records):
                due = wall0 + (stamp - self.start_ns) / NS_PER_S / self.rate
                if not self._sleep_until(due, wall0):
                    return
                self._publishers[topic].publish(raw)
                self.stats.published[topic] = self.stats.published.get(topic, 0) + 1
                lateness = time.monotonic() - due
                self.stats.max_lateness_s = max(self.stats.max_lateness_s, lateness)
                last_ns = stamp
        self._tick_clock(wall0, last_ns)  # the clock ends on the last message's time

    def _sleep_until(self, due: float, wall0: float) -> bool:
        """Sleep until ``due`` (monotonic s), publishing /clock ticks on the way."""
        while not self._stop.is_set():
            now = time.monotonic()
            if self.clock_period is not None and self._next_tick <= min(now, due):
                self._tick_clock(wall0, at=min(now, due))
                self._next_tick += self.clock_period
                continue
            target = due if self.clock_period is None else min(due, self._next_tick)
            if now >= due:
                return True
            self._stop.wait(max(0.0, target - now))
        return False

    def _tick_clock(self, wall0: float, bag_ns: Optional[int] = None,
                    at: Optional[float] = None) -> None:
        """Publish /clock: ``bag_ns``, else the bag time of wall time ``at`` (monotonic s)."""
        if self._clock_pub is None:
            return
        if bag_ns is None:
            bag_ns = self.start_ns + int((at - wall0) * self.rate * NS_PER_S)
            bag_ns = min(bag_ns, self.bag_end_ns)
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(int(bag_ns), NS_PER_S)
        self._clock_pub.publish(msg)
        self.stats.clock_ticks += 1

    # ------------------------------------------------------------------ threads

    def start(self) -> "BagPlayer":
        """Run :meth:`play` on a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("player already started")
        self._thread = threading.Thread(target=self.play, name="a2llm_bag_play", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Join the playback thread; True when it has finished."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def stop(self) -> None:
        """Stop playback (returns at once; :meth:`wait` to join)."""
        self._stop.set()

    def destroy(self, ack_timeout: float = ACK_TIMEOUT_S) -> None:
        """Stop, join, wait up to ``ack_timeout`` s for reliable subscribers to acknowledge
        what was sent (a process exiting at once would lose it), destroy the publishers
        (the node stays)."""
        self.stop()
        self.wait(5.0)
        deadline = time.monotonic() + ack_timeout
        for pub in self._publishers.values():
            left = deadline - time.monotonic()
            if left > 0 and pub.qos_profile.reliability == ReliabilityPolicy.RELIABLE:
                pub.wait_for_all_acked(Duration(nanoseconds=int(left * NS_PER_S)))
        for pub in list(self._publishers.values()) + [self._clock_pub]:
            if pub is not None:
                self.node.destroy_publisher(pub)
        self._publishers, self._clock_pub = {}, None


def play_bag(path, node: Optional[Node] = None, *, context=None, rate: float = 1.0,
             loop: bool = False, **options) -> PlayStats:
    """Play ``path`` in-process and block until done; returns :class:`PlayStats`.

    ``node``: publish on this node (default: a temporary node named
    ``a2llm_bag_player`` on ``context``, which must be initialised).  Further
    keyword options are those of :class:`BagPlayer`.  With ``loop=True`` give
    ``max_loops``, or use :class:`BagPlayer` and call ``stop()`` yourself.
    """
    own = node is None
    if own:
        node = rclpy.create_node(NODE_NAME, context=context)
    player = BagPlayer(node, path, rate=rate, loop=loop, **options)
    try:
        return player.play()
    finally:
        player.destroy()
        if own:
            node.destroy_node()


# ---------------------------------------------------------------------- command line

def parse_remap(items: Sequence[str]) -> Dict[str, str]:
    """``["/a:=/b", ...]`` -> ``{"/a": "/b"}``."""
    out = {}
    for item in items:
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise ValueError(f"remap must look like /from:=/to, got {item!r}")
        out[src] = dst
    return out


def run(args) -> int:
    """Play from parsed arguments until done, or until SIGINT/SIGTERM."""
    from rclpy.signals import SignalHandlerOptions

    remap = parse_remap(args.remap)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(NODE_NAME)
    try:
        player = BagPlayer(node, args.bag, rate=args.rate, loop=args.loop,
                           clock=args.clock is not None,
                           clock_hz=args.clock or DEFAULT_CLOCK_HZ, topics=args.topics,
                           start_offset=args.start_offset, delay=args.delay,
                           wait_for_subscribers=args.wait_for_subscribers, remap=remap)
        if not player.topics:
            print(f"a2llm bag play: nothing to play from {args.bag} "
                  f"(skipped: {player.stats.skipped_topics})", file=sys.stderr)
            player.destroy()
            return 1
        previous = {sig: signal.signal(sig, lambda *_: player.stop())
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            player.start()
            while not player.wait(0.1):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        stats = player.stats
        player.destroy()
        total = sum(stats.published.values())
        print(f"played {total} messages on {len(stats.published)} topics in "
              f"{stats.wall_s:.2f} s ({stats.loops} pass(es), rate {args.rate:g}"
              + (f", {stats.clock_ticks} /clock ticks" if args.clock else "") + ")")
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m a2llm_ros.tools.rosgraph.bag_play BAG [options]``."""
    from a2llm_ros.tools.commands.bag import add_play_arguments

    parser = argparse.ArgumentParser(prog="a2llm_bag_play", description=__doc__.splitlines()[0])
    add_play_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
