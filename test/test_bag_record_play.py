"""Live record/play over DDS: BagRecorder -> MCAP/sqlite3 -> BagPlayer (and the CLI).

Needs the bootstrapped ROS environment (``make test``); skipped without rclpy.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import never, require_ros, wait_for

rclpy = require_ros(audio="ros_drivers")

import audio_common_msgs.msg as audio_msgs  # noqa: E402
from rclpy.duration import Duration  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from std_msgs.msg import String  # noqa: E402

import a2llm_ros.msg as msgs  # noqa: E402
from a2llm_ros.tools.bags import types as T  # noqa: E402
from a2llm_ros.tools.bags.io import bag_summary, read_bag, read_metadata  # noqa: E402
from a2llm_ros.tools.rosgraph.bag_play import (BagPlayer, no_pub_events,  # noqa: E402
                                               no_sub_events, play_bag)
from a2llm_ros.tools.rosgraph.bag_record import BagRecorder  # noqa: E402

pytestmark = pytest.mark.ros

NS = 1_000_000_000
PERIOD_S = 0.05
N_MSGS = 20
FLAME_EVERY = 5
CHATTER, FLAME, AUDIO, INFO = ("/bagtest/chatter", "/bagtest/flame", "/bagtest/audio",
                               "/bagtest/audio_info")
TOPICS = (CHATTER, FLAME, AUDIO, INFO)
OVERLOADED_S = 0.03  # player more than this behind schedule: the machine stalled it
DEPTH = 100  # sink queues: a loaded machine must not drop keep-last samples
LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _publisher(node, cls, topic, qos=10):
    """A publisher without QoS-event handlers (they race with destruction while spinning)."""
    return node.create_publisher(cls, topic, qos, event_callbacks=no_pub_events())


def _wait(cond, timeout=10.0):
    """Whether ``cond()`` came true within ``timeout`` s (:func:`conftest.wait_for`)."""
    return bool(wait_for(cond, timeout))


class Graph:
    """One private rclpy context with a background executor."""

    def __init__(self):
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.executor = rclpy.executors.MultiThreadedExecutor(num_threads=2, context=self.ctx)
        self.nodes = []
        self.errors = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while self.ctx.ok() and not self.stopping.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except (rclpy.executors.ShutdownException,
                    rclpy.executors.ExternalShutdownException):
                return
            except Exception as exc:  # noqa: BLE001 - recorded, checked by the fixture
                self.errors.append(repr(exc))

    def node(self, name, **kwargs):
        node = rclpy.create_node(name, context=self.ctx, **kwargs)
        self.executor.add_node(node)
        self.nodes.append(node)
        return node

    def close(self):
        self.stopping.set()
        self.thread.join(5.0)
        self.executor.shutdown()
        for node in self.nodes:
            node.destroy_node()
        rclpy.shutdown(context=self.ctx)


@pytest.fixture(scope="module")
def graph():
    g = Graph()
    yield g
    g.close()
    assert not g.errors, g.errors


def _flame_chunk(i):
    frames = [msgs.FlameFrame(flame_version=2020, turn_id=1, expression=[float(i)] * 50,
                              jaw_pose=[0.1 * k, 0.0, 0.0]) for k in range(5)]
    return msgs.FlameChunk(frame_rate=25.0, turn_id=1, first_frame_index=i, frames=frames)


def _audio(i):
    pcm = (np.arange(320, dtype=np.int16) * (i + 1)).tobytes()
    return audio_msgs.AudioDataStamped(audio=audio_msgs.AudioData(data=pcm))


@pytest.fixture(scope="module")
def recorded(graph, tmp_path_factory):
    """Publish four topics for ~1 s and record them (AudioInfo latched before the start)."""
    pub = graph.node("bagtest_pub")
    pubs = {CHATTER: _publisher(pub, String, CHATTER),
            FLAME: _publisher(pub, msgs.FlameChunk, FLAME),
            AUDIO: _publisher(pub, audio_msgs.AudioDataStamped, AUDIO),
            INFO: _publisher(pub, audio_msgs.AudioInfo, INFO, LATCHED)}
    pubs[INFO].publish(audio_msgs.AudioInfo(channels=1, sample_rate=16000,
                                            sample_format="S16LE", coding_format="wave"))
    rec_node = graph.node("bagtest_recorder")
    path = tmp_path_factory.mktemp("rec") / "bag"
    recorder = BagRecorder(rec_node, path, TOPICS)
    assert recorder.wait_for_topics(10.0), recorder.missing
    assert _wait(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()))
    hashes = {t: str(rec_node.get_publishers_info_by_topic(t)[0].topic_type_hash)
              for t in TOPICS}
    start = time.monotonic()
    for i in range(N_MSGS):
        # sleep-ok: real-time pacing of the recorded stream (its timing is checked)
        time.sleep(max(0.0, start + i * PERIOD_S - time.monotonic()))
        pubs[CHATTER].publish(String(data=f"msg {i}"))
        pubs[AUDIO].publish(_audio(i))
        if i % FLAME_EVERY == 0:
            pubs[FLAME].publish(_flame_chunk(i))
    expected = {CHATTER: N_MSGS, AUDIO: N_MSGS, FLAME: N_MSGS // FLAME_EVERY, INFO: 1}
    _wait(lambda: recorder.counts == expected, 5.0)
    counts = recorder.close()
    for p in pubs.values():
        pub.destroy_publisher(p)
    return {"path": path, "counts": counts, "expected": expected, "hashes": hashes}


def test_recorded_messages(recorded):
    assert recorded["counts"] == recorded["expected"]
    by_topic = {}
    for topic, _, stamp, msg in read_bag(recorded["path"]):
        by_topic.setdefault(topic, []).append((stamp, msg))
    assert [m.data for _, m in by_topic[CHATTER]] == [f"msg {i}" for i in range(N_MSGS)]
    assert [m.first_frame_index for _, m in by_topic[FLAME]] == [0, 5, 10, 15]
    np.testing.assert_allclose(by_topic[FLAME][2][1].frames[3].jaw_pose, [0.3, 0, 0],
                               rtol=1e-6)
    pcm = [np.frombuffer(m.audio.data.tobytes(), np.int16) for _, m in by_topic[AUDIO]]
    assert all(np.array_equal(p, np.arange(320, dtype=np.int16) * (i + 1))
               for i, p in enumerate(pcm))
    (info,) = [m for _, m in by_topic[INFO]]
    assert (info.sample_rate, info.sample_format) == (16000, "S16LE")
    gaps = np.diff([s for s, _ in by_topic[CHATTER]]) / NS
    assert abs(np.median(gaps) - PERIOD_S) < 0.01, gaps


def test_recorded_metadata(recorded):
    meta = read_metadata(recorded["path"])
    assert meta["storage_identifier"] == "mcap"
    assert meta["message_count"] == sum(recorded["expected"].values())
    topics = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    want = {CHATTER: "std_msgs/msg/String", FLAME: T.FLAME_CHUNK,
            AUDIO: T.AUDIO_DATA_STAMPED, INFO: T.AUDIO_INFO}
    assert {k: v["topic_metadata"]["type"] for k, v in topics.items()} == want
    for name, entry in topics.items():
        md = entry["topic_metadata"]
        assert md["serialization_format"] == "cdr"
        assert md["type_description_hash"] == recorded["hashes"][name], name
        (qos,) = md["offered_qos_profiles"]
        assert qos["reliability"] == "reliable"
        assert qos["durability"] == ("transient_local" if name == INFO else "volatile")
    with Reader(recorded["path"]) as reader:
        defs = {c.topic: c.msgdef.data for c in reader.connections}
    assert "FlameFrame[] frames" in defs[FLAME] and "MSG: a2llm_ros/FlameFrame" in defs[FLAME]


class Sink:
    """Subscriptions on the test topics that log (monotonic time, topic, message)."""

    def __init__(self, node, topics, clock=False):
        self.log, self.clock, self.node = [], [], node
        types = {CHATTER: String, FLAME: msgs.FlameChunk, AUDIO: audio_msgs.AudioDataStamped,
                 INFO: audio_msgs.AudioInfo}
        self.subs = [node.create_subscription(types[t], t, self._cb(t),
                                              LATCHED if t == INFO else DEPTH,
                                              event_callbacks=no_sub_events()) for t in topics]
        if clock:
            self.subs.append(node.create_subscription(Clock, "/clock", self.clock.append, DEPTH,
                                                      event_callbacks=no_sub_events()))

    def _cb(self, topic):
        return lambda msg: self.log.append((time.monotonic(), topic, msg))

    def matched(self):
        return all(sub.get_publisher_count() > 0 for sub in self.subs)

    def of(self, topic):
        return [(t, m) for t, tp, m in self.log if tp == topic]

    def close(self):
        for sub in self.subs:
            self.node.destroy_subscription(sub)


def _clock_ns(msg):
    return msg.clock.sec * NS + msg.clock.nanosec


def _bag_stamps(path, topic):
    return np.array([s for t, _, s, _ in read_bag(path, [topic])], dtype=np.int64)


def _play_and_collect(graph, recorded, rate, name):
    """Play the recorded bag at ``rate`` into a Sink; returns (stats, sink)."""
    sink = Sink(graph.node(f"{name}_sink"), TOPICS)
    player = BagPlayer(graph.node(f"{name}_player"), recorded["path"], rate=rate,
                       wait_for_subscribers=10.0)
    assert _wait(sink.matched)
    stats = player.play()
    assert stats.matched and stats.published == recorded["expected"]
    assert _wait(lambda: len(sink.log) == sum(recorded["expected"].values()), 5.0)
    player.destroy()
    sink.close()
    return stats, sink


@pytest.mark.parametrize("rate", [1.0, 4.0])
def test_play_preserves_messages_and_timing(graph, recorded, rate):
    for attempt in range(3):
        stats, sink = _play_and_collect(graph, recorded, rate, f"bagtest_{int(rate)}_{attempt}")
        if stats.max_lateness_s < OVERLOADED_S:
            break  # else the machine stalled the player itself: measure again
    assert [m.data for _, m in sink.of(CHATTER)] == [f"msg {i}" for i in range(N_MSGS)]
    assert [m.first_frame_index for _, m in sink.of(FLAME)] == [0, 5, 10, 15]
    assert sink.of(INFO)[0][1].sample_rate == 16000
    assert bytes(sink.of(AUDIO)[7][1].audio.data) == _audio(7).audio.data.tobytes()
    stamps = _bag_stamps(recorded["path"], AUDIO)
    want = (stamps - stamps[0]) / NS / rate
    got = np.array([t for t, _ in sink.of(AUDIO)])
    got -= got[0]
    err = got - want
    err -= np.median(err)  # a constant delivery latency is not a timing error
    # loose enough for a loaded 2-core machine, far tighter than a wrong rate (0.7 s off)
    assert np.median(np.abs(err)) < 0.02 and np.abs(err).max() < 0.1, (err, stats)
    assert abs(got[-1] / want[-1] - 1.0) < 0.15, (got[-1], want[-1])


def test_play_publishes_clock_for_sim_time_nodes(graph, recorded):
    sink = Sink(graph.node("bagtest_clock_sink"), [CHATTER], clock=True)
    sim = graph.node("bagtest_sim", parameter_overrides=[Parameter("use_sim_time", value=True)])
    player = BagPlayer(graph.node("bagtest_clock_player"), recorded["path"], rate=2.0,
                       clock=True, clock_hz=100.0, topics=[CHATTER], wait_for_subscribers=10.0)
    assert _wait(lambda: player._clock_pub.get_subscription_count() >= 2)
    assert _wait(sink.matched)
    stats = player.play()
    stamps = _bag_stamps(recorded["path"], CHATTER)
    wait_for(lambda: sink.clock and _clock_ns(sink.clock[-1]) == stamps[-1]
             and sim.get_clock().now().nanoseconds == stamps[-1], 5.0,
             "the last /clock tick (the last message's stamp) at the sink and the sim node")
    player.destroy()
    sink.close()
    span_s = (stamps[-1] - stamps[0]) / NS
    ticks = np.array([_clock_ns(c) for c in sink.clock], dtype=np.int64)
    assert stats.published == {CHATTER: N_MSGS}
    assert len(ticks) >= 0.5 * span_s / 2.0 * 100, len(ticks)
    assert np.all(np.diff(ticks) >= 0)
    assert ticks[0] == player.bag_start_ns and ticks[-1] == stamps[-1]
    sim_now = sim.get_clock().now().nanoseconds
    assert sim_now == stamps[-1], (sim_now, stamps[-1])


def test_play_loop_and_topic_filter(graph, recorded):
    sink = Sink(graph.node("bagtest_loop_sink"), [CHATTER, AUDIO])
    player = BagPlayer(graph.node("bagtest_loop_player"), recorded["path"], rate=4.0, loop=True,
                       max_loops=2, topics=[CHATTER], wait_for_subscribers=10.0)
    assert _wait(lambda: sink.subs[0].get_publisher_count() > 0)
    stats = player.play()
    assert _wait(lambda: len(sink.log) >= 2 * N_MSGS, 5.0)
    never(lambda: len(sink.log) > 2 * N_MSGS, 0.1, "more than two loops of CHATTER arrived")
    player.destroy()
    sink.close()
    assert stats.loops == 2 and stats.published == {CHATTER: 2 * N_MSGS}
    assert [m.data for _, m in sink.of(CHATTER)] == [f"msg {i % N_MSGS}"
                                                     for i in range(2 * N_MSGS)]
    assert not sink.of(AUDIO)


def test_play_bag_with_its_own_node_and_start_offset(graph, recorded):
    sink = Sink(graph.node("bagtest_offset_sink"), [CHATTER, INFO])
    stamps = _bag_stamps(recorded["path"], CHATTER)
    offset_s = (stamps[10] - bag_summary(recorded["path"])["start_ns"]) / NS - 0.001
    # ^ just before "msg 10"; the offset counts from the bag's first message
    stats = play_bag(recorded["path"], context=graph.ctx, rate=4.0, topics=[CHATTER, INFO],
                     start_offset=offset_s, wait_for_subscribers=10.0, delay=0.3)
    assert _wait(lambda: len(sink.of(CHATTER)) == N_MSGS - 10, 5.0)
    sink.close()
    assert stats.published == {CHATTER: N_MSGS - 10}  # AudioInfo lies before the offset
    assert [m.data for _, m in sink.of(CHATTER)] == [f"msg {i}" for i in range(10, N_MSGS)]


def test_record_all_topics(graph, tmp_path):
    node = graph.node("bagtest_all_pub")
    pubs = [_publisher(node, String, f"/bagtest/all_{k}") for k in range(2)]
    recorder = BagRecorder(graph.node("bagtest_all_rec"), tmp_path / "all", all_topics=True,
                           exclude="^/bagtest/(chatter|audio|flame|cli|sqlite)")
    assert recorder.wait_for_topics(10.0, ["/bagtest/all_0", "/bagtest/all_1"])
    assert _wait(lambda: all(p.get_subscription_count() > 0 for p in pubs))
    for k, pub in enumerate(pubs):
        pub.publish(String(data=f"all {k}"))
    assert _wait(lambda: recorder.message_count >= 2, 5.0)
    recorder.close()
    topics = {t for t, *_ in read_bag(tmp_path / "all")}
    assert {"/bagtest/all_0", "/bagtest/all_1"} <= topics
    assert not topics & {"/rosout", "/parameter_events", CHATTER}


def test_record_sqlite3(graph, tmp_path):
    node = graph.node("bagtest_sqlite_pub")
    pub = _publisher(node, String, "/bagtest/sqlite")
    recorder = BagRecorder(graph.node("bagtest_sqlite_rec"), tmp_path / "db", ["/bagtest/sqlite"],
                           storage="sqlite3")
    assert recorder.wait_for_topics(10.0)
    assert _wait(lambda: pub.get_subscription_count() > 0)
    for i in range(5):
        pub.publish(String(data=str(i)))
    assert _wait(lambda: recorder.message_count == 5, 5.0)
    recorder.close()
    assert read_metadata(tmp_path / "db")["storage_identifier"] == "sqlite3"
    assert [m.data for *_, m in read_bag(tmp_path / "db")] == ["0", "1", "2", "3", "4"]
    assert list((tmp_path / "db").glob("*.db3"))


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "a2llm_ros.tools.cli", "bag", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ))


def test_cli_record_stops_on_sigint_and_plays_back(graph, tmp_path):
    topic = "/bagtest/cli"
    node = graph.node("bagtest_cli_pub")
    pub = _publisher(node, String, topic)
    bag = tmp_path / "cli_bag"
    proc = _cli("record", topic, "-o", str(bag))
    assert _wait(lambda: pub.get_subscription_count() > 0, 20.0), proc.poll()
    for i in range(10):
        pub.publish(String(data=f"cli {i}"))
    # reliable QoS: every message is in the recorder's reader once acknowledged
    assert pub.wait_for_all_acked(Duration(seconds=10)), "the recorder did not ack"
    # sleep-ok: the recorder process shows no progress of its own; its spin loop takes
    # the acked messages within milliseconds (a cross-process grace, nothing to wait on)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert [m.data for *_, m in read_bag(bag)] == [f"cli {i}" for i in range(10)], out
    node.destroy_publisher(pub)

    sink = []
    sub = node.create_subscription(String, topic, sink.append, DEPTH,
                                   event_callbacks=no_sub_events())
    proc = _cli("play", str(bag), "--rate", "2", "--wait-for-subscribers", "20", "--delay", "1")
    out, _ = proc.communicate(timeout=40)
    assert proc.returncode == 0, out
    assert _wait(lambda: len(sink) == 10, 5.0), out
    assert [m.data for m in sink] == [f"cli {i}" for i in range(10)]
    assert "played 10 messages" in out
    node.destroy_subscription(sub)
