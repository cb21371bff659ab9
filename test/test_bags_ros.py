"""Bags vs the real ROS 2 type support: rosidl hashes and rclpy CDR, both directions.

Needs the bootstrapped environment (``make test``: rclpy wheels and the built
interfaces under ``.a2llm_ws/install``); skipped without it.
"""
from pathlib import Path

import numpy as np
import pytest
from conftest import require_ros

from a2llm_ros.tools.bags import types as T
from a2llm_ros.tools.bags.fixtures import make_fixture
from a2llm_ros.tools.bags.io import BagWriter, read_bag, read_bag_raw

INSTALL = Path(__file__).resolve().parents[1] / ".a2llm_ws" / "install"
NS = 1_000_000_000


@pytest.mark.parametrize("msgtype", T.PROJECT_TYPES + T.FLAVOUR_TYPES[T.ROS_DRIVERS])
def test_rosbags_hash_equals_rosidl(msgtype):
    from type_hashes import built_type_hash

    pkg, _, name = msgtype.split("/")
    path = INSTALL / pkg / "share" / pkg / "msg" / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{path} missing: run `make env`")
    assert T.typestore_for().hash_rihs01(msgtype) == built_type_hash(path)


def test_fixture_cdr_decodes_with_rclpy(tmp_path):
    require_ros(interfaces=False, audio="ros_drivers")
    import audio_common_msgs.msg as audio_msgs
    from rclpy.serialization import deserialize_message
    make_fixture("conversation", tmp_path, seed=0)
    ours = list(read_bag(tmp_path / "conversation"))
    raws = list(read_bag_raw(tmp_path / "conversation"))
    for (_, msgtype, _, mine), (_, _, _, raw) in zip(ours[:20], raws[:20]):
        cls = getattr(audio_msgs, msgtype.rsplit("/", 1)[-1])
        theirs = deserialize_message(raw, cls)
        if msgtype == T.AUDIO_INFO:
            assert (theirs.sample_rate, theirs.sample_format) == (16000, "S16LE")
        else:
            assert bytes(theirs.audio.data) == mine.audio.data.tobytes()
            assert theirs.header.stamp.sec == mine.header.stamp.sec


def test_rclpy_serialised_flame_chunk_reads_back(tmp_path):
    require_ros()
    import a2llm_ros.msg as msg_mod
    from rclpy.serialization import serialize_message
    frames = []
    for i in range(5):
        frame = msg_mod.FlameFrame(flame_version=2020, turn_id=2,
                                   expression=[float(i)] * 50, jaw_pose=[0.1, 0.2, 0.3],
                                   head_rotation=[0.0, 0.5, 0.0], eyelids=[0.2, 0.9],
                                   eye_pose=[0.0] * 6)
        frame.header.stamp.sec = 7
        frame.header.stamp.nanosec = i * 40_000_000
        frames.append(frame)
    chunk = msg_mod.FlameChunk(frame_rate=25.0, turn_id=2, first_frame_index=5, source=1,
                               frames=frames)
    bag = tmp_path / "bag"
    with BagWriter(bag) as writer:
        writer.write_raw("/a2llm/flame", serialize_message(chunk), 7 * NS, T.FLAME_CHUNK)
    (record,) = list(read_bag(bag))
    got = record[3]
    assert (got.turn_id, got.first_frame_index, got.source, len(got.frames)) == (2, 5, 1, 5)
    np.testing.assert_allclose(got.frames[3].expression, [3.0] * 50)
    np.testing.assert_allclose(got.frames[4].eyelids, [0.2, 0.9], rtol=1e-6)
    assert got.frames[4].header.stamp.nanosec == 160_000_000
