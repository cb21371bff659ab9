"""BagWriter/read_bag round trips, metadata.yaml layout, PCM codec and FLAME export."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from a2llm_ros.tools.bags import types as T
from a2llm_ros.tools.bags.export import (PCM_FORMATS, SkipMessage, decode_pcm, encode_pcm,
                                         export_flame)
from a2llm_ros.tools.bags.io import BagWriter, bag_summary, read_bag, read_metadata

NS = 1_000_000_000


def _header(store, ns, frame_id="f"):
    Time = store.types["builtin_interfaces/msg/Time"]
    return store.types["std_msgs/msg/Header"](stamp=Time(sec=ns // NS, nanosec=ns % NS),
                                              frame_id=frame_id)


def _frame(store, ns, turn, rng, n_expr=50):
    return store.types[T.FLAME_FRAME](
        header=_header(store, ns), flame_version=2020, turn_id=turn,
        expression=rng.normal(size=n_expr).astype(np.float32),
        jaw_pose=rng.normal(size=3).astype(np.float32),
        head_rotation=rng.normal(size=3).astype(np.float32),
        eyelids=rng.uniform(size=2).astype(np.float32),
        eye_pose=np.zeros(6, np.float32))


def _project_messages(store, rng):
    ns = 5 * NS
    chunk = store.types[T.FLAME_CHUNK](
        header=_header(store, ns), frame_rate=25.0, turn_id=3, first_frame_index=10, source=0,
        frames=[_frame(store, ns + i * 40_000_000, 3, rng) for i in range(5)])
    return {
        T.FLAME_FRAME: _frame(store, ns, 1, rng),
        T.FLAME_CHUNK: chunk,
        T.CONVERSATION_STATE: store.types[T.CONVERSATION_STATE](
            header=_header(store, ns), state=2, turn_id=4, reason="end of utterance"),
        T.RESPONSE_TEXT: store.types[T.RESPONSE_TEXT](
            header=_header(store, ns), turn_id=4, text="My name is Robo.", final=True),
    }


def _audio_messages(store, flavour, rng):
    if flavour == T.ROS_DRIVERS:
        data = store.types[T.AUDIO_DATA](data=rng.integers(0, 256, 64, dtype=np.uint8))
        return {T.AUDIO_DATA: data,
                T.AUDIO_DATA_STAMPED: store.types[T.AUDIO_DATA_STAMPED](
                    header=_header(store, 7), audio=data),
                T.AUDIO_INFO: store.types[T.AUDIO_INFO](
                    channels=2, sample_rate=44100, sample_format="S16LE", bitrate=1411200,
                    coding_format="wave")}
    arrays = {"float32_data": rng.normal(size=4).astype(np.float32),
              "int32_data": np.arange(3, dtype=np.int32),
              "int16_data": rng.integers(-3000, 3000, 512).astype(np.int16),
              "int8_data": np.array([-1, 2], np.int8), "uint8_data": np.array([7], np.uint8)}
    info = store.types[T.AUDIO_INFO](format=8, channels=1, rate=16000, chunk=512)
    audio = store.types[T.AUDIO](audio_data=store.types[T.AUDIO_DATA](**arrays), info=info)
    return {T.AUDIO_DATA: audio.audio_data, T.AUDIO_INFO: info, T.AUDIO: audio,
            T.AUDIO_STAMPED: store.types[T.AUDIO_STAMPED](header=_header(store, 9), audio=audio)}


def _assert_equal(a, b, path="msg"):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{path}[{i}]")
    elif hasattr(a, "__dataclass_fields__"):
        assert type(a).__name__ == type(b).__name__, path
        for name in a.__dataclass_fields__:
            _assert_equal(getattr(a, name), getattr(b, name), f"{path}.{name}")
    else:
        assert a == b, path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("flavour", T.FLAVOURS)
def test_round_trip_every_type(tmp_path, storage, flavour):
    store = T.typestore_for(flavour)
    rng = np.random.default_rng(0)
    messages = {**_project_messages(store, rng), **_audio_messages(store, flavour, rng)}
    assert set(T.FLAVOUR_TYPES[flavour]) | set(T.PROJECT_TYPES) == set(messages)
    topics = {t: "/t/" + t.rsplit("/", 1)[-1].lower() for t in messages}
    bag = tmp_path / "bag"
    with BagWriter(bag, storage=storage, flavour=flavour) as writer:
        for i, (msgtype, msg) in enumerate(messages.items()):
            writer.write(topics[msgtype], msg, 100 + i)
    records = list(read_bag(bag))
    assert [r[1] for r in records] == list(messages)
    assert [r[2] for r in records] == list(range(100, 100 + len(messages)))
    for topic, msgtype, _, msg in records:
        assert topic == topics[msgtype]
        _assert_equal(msg, messages[msgtype], msgtype)
    assert (bag / f"bag.{'mcap' if storage == 'mcap' else 'db3'}").exists()


def test_metadata_yaml_topics_counts_qos(tmp_path):
    bag = tmp_path / "bag"
    store = T.typestore_for(T.ROS_DRIVERS)
    info = _audio_messages(store, T.ROS_DRIVERS, np.random.default_rng(1))
    with BagWriter(bag) as writer:
        writer.write("/audio/audio_info", info[T.AUDIO_INFO], 10)
        for k in range(3):
            writer.write("/audio/audio_stamped", info[T.AUDIO_DATA_STAMPED], 20 + k)
        writer.add_topic("/flame", T.FLAME_CHUNK, qos="sensor_data")
    raw = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert raw["version"] == 9 and raw["storage_identifier"] == "mcap"
    assert raw["message_count"] == 4 and raw["relative_file_paths"] == ["bag.mcap"]
    topics = {t["topic_metadata"]["name"]: t for t in raw["topics_with_message_count"]}
    assert {n: t["message_count"] for n, t in topics.items()} == {
        "/audio/audio_info": 1, "/audio/audio_stamped": 3, "/flame": 0}
    for entry in topics.values():
        meta = entry["topic_metadata"]
        assert meta["serialization_format"] == "cdr"
        assert meta["type_description_hash"].startswith("RIHS01_")
        (qos,) = meta["offered_qos_profiles"]
        assert set(qos) >= {"history", "depth", "reliability", "durability", "deadline",
                            "lifespan", "liveliness", "liveliness_lease_duration",
                            "avoid_ros_namespace_conventions"}
    info_qos = topics["/audio/audio_info"]["topic_metadata"]["offered_qos_profiles"][0]
    assert (info_qos["durability"], info_qos["reliability"], info_qos["depth"]) == (
        "transient_local", "reliable", 1)
    flame_qos = topics["/flame"]["topic_metadata"]["offered_qos_profiles"][0]
    assert flame_qos["reliability"] == "best_effort"
    assert topics["/audio/audio_info"]["topic_metadata"]["type"] == T.AUDIO_INFO
    summary = bag_summary(bag)
    info_summary = summary["topics"]["/audio/audio_info"]
    assert info_summary["qos"] == ["reliable/transient_local/keep_last:1"]
    assert summary["duration_ns"] >= 12


def test_humble_layout_is_v8_with_integer_qos_string(tmp_path):
    bag = tmp_path / "bag"
    store = T.typestore_for(T.MGONZS13, "humble")
    msg = _audio_messages(store, T.MGONZS13, np.random.default_rng(2))[T.AUDIO_STAMPED]
    with BagWriter(bag, storage="sqlite3", flavour=T.MGONZS13, distro="humble") as writer:
        writer.write("/audio", msg, 5)
    meta = read_metadata(bag)
    assert meta["version"] == 8
    qos_text = meta["topics_with_message_count"][0]["topic_metadata"]["offered_qos_profiles"]
    assert isinstance(qos_text, str)
    (qos,) = yaml.safe_load(qos_text)
    assert (qos["reliability"], qos["durability"], qos["history"], qos["depth"]) == (2, 2, 1, 5)
    assert len(list(read_bag(bag))) == 1


def test_embedded_definitions_decode_unknown_types(tmp_path):
    from rosbags.typesys import get_types_from_msg

    store = T.new_typestore()
    store.register(get_types_from_msg("int32 a\nstring[] names\n", "demo_pkg/msg/Foo"))
    bag = tmp_path / "bag"
    with BagWriter(bag, typestore=store) as writer:
        writer.write("/foo", store.types["demo_pkg/msg/Foo"](a=-4, names=["x", "y"]), 1)
    (record,) = list(read_bag(bag))  # no typestore given: definitions come from the bag
    assert record[1] == "demo_pkg/msg/Foo" and record[3].a == -4
    assert record[3].names == ["x", "y"]


def test_read_bag_on_error_skips(tmp_path):
    bag = tmp_path / "bag"
    store = T.typestore_for(T.ROS_DRIVERS)
    with BagWriter(bag) as writer:
        writer.write("/text", store.types[T.RESPONSE_TEXT](
            header=_header(store, 1), turn_id=1, text="hi", final=False), 1)
    wrong = T.typestore_for(T.MGONZS13)
    wrong_types = dict(wrong.fielddefs)
    wrong_types[T.RESPONSE_TEXT] = wrong_types[T.AUDIO_STAMPED]  # force a decode failure
    from rosbags.typesys import Stores, get_typestore

    broken = get_typestore(Stores.EMPTY)
    broken.register(wrong_types)
    errors = []
    assert list(read_bag(bag, typestore=broken,
                         on_error=lambda t, s, e: errors.append((t, s)))) == []
    assert errors == [("/text", 1)]


@pytest.mark.parametrize("fmt", sorted(PCM_FORMATS))
def test_pcm_codec_round_trip(fmt):
    rng = np.random.default_rng(3)
    audio = rng.uniform(-0.9, 0.9, size=(50, 2))
    decoded = decode_pcm(encode_pcm(audio, fmt), fmt, 2)
    assert decoded.shape == (50, 2)
    step = {"S8": 1 / 128, "U8": 1 / 128, "S16LE": 1 / 32768}.get(fmt, 1e-6)
    assert np.abs(decoded - audio).max() <= step / 2 + 1e-7


def test_pcm_decode_rejects_bad_input():
    with pytest.raises(SkipMessage) as bad:
        decode_pcm(b"\x00\x01\x02", "S16LE", 1)
    assert bad.value.reason == "bad_length"
    with pytest.raises(SkipMessage) as empty:
        decode_pcm(b"", "S16LE", 1)
    assert empty.value.reason == "empty"
    with pytest.raises(SkipMessage) as unknown:
        decode_pcm(b"\x00\x00", "MP3", 1)
    assert unknown.value.reason == "unsupported_format"


def _flame_stream(store, rng, n_chunks=6):
    frames = rng.normal(size=(n_chunks * 5, 58)).astype(np.float32)  # [T, 58]
    t0 = 100 * NS
    msgs = []
    for c in range(n_chunks):
        turn = 1 if c < 3 else 2
        fr = []
        for i in range(5):
            k = c * 5 + i
            f = frames[k]
            fr.append(store.types[T.FLAME_FRAME](
                header=_header(store, t0 + k * 40_000_000), flame_version=2020, turn_id=turn,
                expression=f[:50], jaw_pose=f[50:53], head_rotation=f[53:56],
                eyelids=f[56:58], eye_pose=np.zeros(6, np.float32)))
        msgs.append(store.types[T.FLAME_CHUNK](
            header=fr[0].header, frame_rate=25.0, turn_id=turn, first_frame_index=c * 5,
            source=0, frames=fr))
    return frames, msgs


def test_flame_export_gives_original_frames(tmp_path):
    store = T.typestore_for()
    frames, msgs = _flame_stream(store, np.random.default_rng(4))
    bag = tmp_path / "bag"
    with BagWriter(bag) as writer:
        for msg in msgs:
            stamp = msg.header.stamp.sec * NS + msg.header.stamp.nanosec
            writer.write("/a2llm/flame", msg, stamp)
        for k, msg in enumerate(msgs[0].frames):  # a FlameFrame topic as well
            writer.write("/a2llm/flame_frame", msg, 100 * NS + k)
    report = export_flame(bag, "/a2llm/flame", tmp_path / "f.npz")
    data = np.load(tmp_path / "f.npz")
    np.testing.assert_array_equal(data["frames"], frames)
    assert report.n_frames == 30 and report.dim == 58 and report.n_messages == 6
    np.testing.assert_array_equal(data["stamps_ns"], 100 * NS + np.arange(30) * 40_000_000)
    np.testing.assert_array_equal(data["turn_ids"], [1] * 15 + [2] * 15)
    assert float(data["fps"]) == 25.0 and set(data["sources"]) == {0}
    export_flame(bag, "/a2llm/flame_frame", tmp_path / "g.npz")
    single = np.load(tmp_path / "g.npz")
    np.testing.assert_array_equal(single["frames"], frames[:5])
    assert set(single["sources"]) == {-1}


def test_raw_write_and_read_and_topic_qos(tmp_path):
    store = T.typestore_for()
    msg = store.types[T.AUDIO_INFO](channels=1, sample_rate=16000, sample_format="S16LE",
                                    bitrate=256000, coding_format="wave")
    raw = store.serialize_cdr(msg, T.AUDIO_INFO)
    bag = tmp_path / "bag"
    with BagWriter(bag) as writer:
        writer.write_raw("/audio/audio_info", raw, 42, msgtype=T.AUDIO_INFO)
    from a2llm_ros.tools.bags.io import bag_topics, qos_to_dict, read_bag_raw

    assert list(read_bag_raw(bag)) == [("/audio/audio_info", T.AUDIO_INFO, 42, bytes(raw))]
    topic = bag_topics(bag)["/audio/audio_info"]
    assert (topic.msgtype, topic.count) == (T.AUDIO_INFO, 1)
    qos = qos_to_dict(topic.qos[0])
    assert (qos["durability"], qos["reliability"], qos["depth"]) == ("transient_local",
                                                                     "reliable", 1)
    assert qos["deadline_ns"] is None
