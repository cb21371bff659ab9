"""Write and read rosbag2 bags (MCAP or sqlite3) with rosbags, without rclpy.

:class:`BagWriter` produces what ``ros2 bag info/play`` expects:

* a bag directory with ``metadata.yaml`` (rosbag2 format version 9, the
  Jazzy/Kilted layout, by default; version 8 for Humble) and one storage file
  (``.mcap`` by default, ``.db3`` with ``storage="sqlite3"``);
* ``serialization_format: cdr`` and each type's full message definition
  (``ros2msg``) embedded, plus its RIHS01 type hash;
* ``offered_qos_profiles`` per topic, so ``ros2 bag play`` offers the same
  QoS: in version 9 a YAML list of profiles with policy names
  (``reliability: reliable``, ``durability: transient_local`` ...), in version
  8 a YAML string with the rmw enum integers.  Durations are written as
  ``RMW_DURATION_INFINITE`` (sec 9223372036, nsec 854775807), as
  ``ros2 bag record`` stores them.

QoS per topic defaults by convention (:func:`default_qos`): AudioInfo is
latched (reliable, transient local, depth 1), mgonzs13 ``AudioStamped`` uses
SensorDataQoS (best effort, volatile, depth 5), everything else reliable,
volatile, depth 10.

Checked without ROS: the layout against rosbag2's own sources (jazzy branch
``rosbag2_storage/yaml.hpp``/``qos.cpp``: v9 reads ``offered_qos_profiles`` as
a list of named policies, v<=8 as a string with integers; humble branch
``metadata_io.cpp``: version-5 reader wants the string form and does not reject
newer versions), and the MCAP files with the independent ``mcap`` +
``mcap-ros2-support`` decoders (profile ``ros2``, ``ros2msg`` schemas,
per-channel ``offered_qos_profiles`` metadata, ``rosbag2`` metadata record).
Not checked (no ROS 2 install here): the real ``ros2 bag info/play`` on these
files, that the RIHS01 hashes rosbags computes equal rosidl's for the
project's own messages, and Humble's sqlite3 plugin with the schema-4 tables
rosbags writes (use MCAP on Humble if in doubt).

:func:`read_bag` iterates ``(topic, msgtype, timestamp_ns, message)`` in
timestamp order, deserialising with the bag's own embedded definitions when it
has them, else with :func:`~a2llm_ros.tools.bags.types.typestore_for`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple, Union

from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                QosReliability, QosTime)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import get_types_from_msg
from rosbags.typesys.msg import TypesysError

from a2llm_ros.tools.bags import types as T

PathLike = Union[str, Path]
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
DEFAULT_STORAGE = "mcap"
#: rosbag2 metadata version per distro (rosbags writes 8 or 9).
BAG_VERSION = {"kilted": 9, "jazzy": 9, "humble": 8}
#: RMW_DURATION_INFINITE as recorded by rosbag2.
INFINITE = QosTime(9223372036, 854775807)
DEFAULT_DEPTH = 10
SENSOR_DATA_DEPTH = 5
LATCHED_DEPTH = 1


def make_qos(reliability: str = "reliable", durability: str = "volatile",
             depth: int = DEFAULT_DEPTH) -> Qos:
    """A keep-last QoS profile from policy names (``reliable``/``best_effort``,
    ``volatile``/``transient_local``)."""
    return Qos(history=QosHistory.KEEP_LAST, depth=int(depth),
               reliability=QosReliability[reliability.upper()],
               durability=QosDurability[durability.upper()],
               deadline=INFINITE, lifespan=INFINITE,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=INFINITE,
               avoid_ros_namespace_conventions=False)


QOS_DEFAULT = make_qos()
QOS_SENSOR_DATA = make_qos("best_effort", "volatile", SENSOR_DATA_DEPTH)
QOS_LATCHED = make_qos("reliable", "transient_local", LATCHED_DEPTH)
QOS_PRESETS = {"default": QOS_DEFAULT, "sensor_data": QOS_SENSOR_DATA,
               "latched": QOS_LATCHED}


def default_qos(topic: str, msgtype: str) -> Qos:
    """QoS the real publisher of ``msgtype`` offers (see module docstring)."""
    if msgtype == T.AUDIO_INFO:
        return QOS_LATCHED
    if msgtype == T.AUDIO_STAMPED:
        return QOS_SENSOR_DATA
    return QOS_DEFAULT


def _as_qos(qos) -> Qos:
    return QOS_PRESETS[qos] if isinstance(qos, str) else qos


class BagWriter:
    """Write a rosbag2 bag directory (context manager).

    ``BagWriter(path, storage="mcap"|"sqlite3", flavour=..., distro=...)``;
    ``add_topic(topic, msgtype, qos=None)`` declares a topic (optional: the
    first ``write`` declares it with :func:`default_qos`), ``write(topic,
    message, timestamp_ns, msgtype=None)`` serialises and stores one message.
    ``path`` must not exist yet.
    """

    def __init__(self, path: PathLike, *, storage: str = DEFAULT_STORAGE,
                 flavour: str = T.ROS_DRIVERS, distro: str = T.DEFAULT_DISTRO,
                 typestore=None, custom_data: Optional[Dict[str, str]] = None):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {sorted(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        self.typestore = typestore or T.typestore_for(flavour, distro)
        self._writer = Writer(self.path, version=BAG_VERSION[distro],
                              storage_plugin=STORAGES[storage])
        self._writer.set_custom_data("writer", "a2llm_ros.tools.bags")
        for key, value in (custom_data or {}).items():
            self._writer.set_custom_data(str(key), str(value))
        self._connections: Dict[str, object] = {}
        self._writer.open()

    def add_topic(self, topic: str, msgtype: str, qos=None) -> None:
        """Declare ``topic`` of ``msgtype`` with ``qos`` (Qos, preset name or None)."""
        if topic in self._connections:
            raise ValueError(f"topic {topic!r} already added")
        profile = default_qos(topic, msgtype) if qos is None else _as_qos(qos)
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self.typestore, serialization_format="cdr",
            offered_qos_profiles=[profile])

    def write(self, topic: str, message, timestamp_ns: int, msgtype: str = None) -> None:
        """Serialise ``message`` (a rosbags message object) to ``topic`` at ``timestamp_ns``."""
        if topic not in self._connections:
            self.add_topic(topic, msgtype or message.__msgtype__)
        conn = self._connections[topic]
        raw = self.typestore.serialize_cdr(message, conn.msgtype)
        self._writer.write(conn, int(timestamp_ns), raw)

    def write_raw(self, topic: str, raw: bytes, timestamp_ns: int, msgtype: str = None,
                  qos=None) -> None:
        """Store already CDR-serialised bytes (e.g. from an rclpy ``raw=True`` subscription).

        The first write to a topic needs ``msgtype`` (and takes ``qos``, else
        :func:`default_qos`); the type must be known to the writer's typestore.
        """
        if topic not in self._connections:
            if msgtype is None:
                raise ValueError(f"first write to {topic!r} needs msgtype")
            self.add_topic(topic, msgtype, qos)
        self._writer.write(self._connections[topic], int(timestamp_ns), bytes(raw))

    def msg(self, msgtype: str, **fields):
        """Build a message object of ``msgtype`` from keyword fields."""
        return self.typestore.types[msgtype](**fields)

    def close(self) -> None:
        """Finish the storage file and write ``metadata.yaml``."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        elif self._writer is not None:
            self._writer.abort()
            self._writer = None
        return False


Record = Tuple[str, str, int, object]
ErrorHook = Callable[[str, int, Exception], None]


def read_bag(path: PathLike, topics: Optional[Iterable[str]] = None, typestore=None,
             on_error: Optional[ErrorHook] = None) -> Iterator[Record]:
    """Iterate ``(topic, msgtype, timestamp_ns, message)`` of a rosbag2 bag directory.

    ``topics`` limits the topics read.  A message that fails to deserialise
    raises, unless ``on_error(topic, timestamp_ns, exc)`` is given: then it is
    reported there and skipped.
    """
    with Reader(Path(path)) as reader:
        store = typestore or typestore_for_connections(reader.connections)
        wanted = None if topics is None else set(topics)
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        for conn, stamp, raw in reader.messages(connections=conns):
            try:
                message = store.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001 - any decode failure is reported
                if on_error is None:
                    raise
                on_error(conn.topic, stamp, exc)
                continue
            yield conn.topic, conn.msgtype, stamp, message


def read_bag_raw(path: PathLike,
                 topics: Optional[Iterable[str]] = None) -> Iterator[Tuple[str, str, int, bytes]]:
    """Iterate ``(topic, msgtype, timestamp_ns, cdr_bytes)`` without deserialising
    (for replay with an rclpy publisher, which accepts serialised bytes)."""
    with Reader(Path(path)) as reader:
        wanted = None if topics is None else set(topics)
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        for conn, stamp, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, stamp, bytes(raw)


@dataclass(frozen=True)
class BagTopic:
    """One topic of a bag: type, message count and the QoS profiles its publishers offered."""

    name: str
    msgtype: str
    count: int
    qos: Tuple[Qos, ...]


def bag_topics(path: PathLike) -> Dict[str, BagTopic]:
    """Topic name -> :class:`BagTopic` (QoS as recorded, for re-creating publishers)."""
    with Reader(Path(path)) as reader:
        out: Dict[str, BagTopic] = {}
        for conn in reader.connections:
            qos = tuple(getattr(conn.ext, "offered_qos_profiles", []) or [])
            prev = out.get(conn.topic)
            count = conn.msgcount + (prev.count if prev else 0)
            out[conn.topic] = BagTopic(conn.topic, conn.msgtype, count,
                                       prev.qos + qos if prev else qos)
        return out


def qos_to_dict(qos: Qos) -> dict:
    """A Qos as plain policy names/numbers (``reliability: "reliable"``, ``depth: 1`` ...)."""
    return {"history": qos.history.name.lower(), "depth": int(qos.depth),
            "reliability": qos.reliability.name.lower(),
            "durability": qos.durability.name.lower(),
            "liveliness": qos.liveliness.name.lower(),
            "deadline_ns": _duration_ns(qos.deadline), "lifespan_ns": _duration_ns(qos.lifespan),
            "liveliness_lease_duration_ns": _duration_ns(qos.liveliness_lease_duration),
            "avoid_ros_namespace_conventions": bool(qos.avoid_ros_namespace_conventions)}


def _duration_ns(value: QosTime) -> Optional[int]:
    """Nanoseconds, or None for infinite/unspecified."""
    if value == INFINITE or (value.sec, value.nsec) == (0, 0):
        return None
    return int(value.sec) * 1_000_000_000 + int(value.nsec)


def typestore_for_connections(connections, distro: str = T.DEFAULT_DISTRO):
    """Typestore able to decode ``connections``: project + detected audio flavour + the
    definitions embedded in the bag for any type still unknown."""
    conns = list(connections)
    defs = [c.msgdef.data for c in conns if c.msgdef and c.msgdef.data]
    store = T.new_typestore(T.detect_flavour([c.msgtype for c in conns], defs), distro)
    for conn in conns:
        if conn.msgtype in store.fielddefs or not (conn.msgdef and conn.msgdef.data):
            continue
        if conn.msgdef.data.startswith("=" * 80 + "\nIDL: "):
            continue
        try:
            known = set(store.fielddefs)
            parsed = get_types_from_msg(conn.msgdef.data, conn.msgtype)
            store.register({k: v for k, v in parsed.items() if k not in known})
        except TypesysError:
            continue
    return store


def bag_summary(path: PathLike) -> dict:
    """Topics (type, count, QoS), message count, start and duration of a bag."""
    with Reader(Path(path)) as reader:
        topics = {}
        for conn in reader.connections:
            qos = getattr(conn.ext, "offered_qos_profiles", []) or []
            entry = topics.setdefault(conn.topic, {"type": conn.msgtype, "count": 0,
                                                   "qos": [_qos_text(q) for q in qos]})
            entry["count"] += conn.msgcount
        meta = read_metadata(path)
        return {"path": str(path), "storage": meta.get("storage_identifier", ""),
                "version": meta.get("version"), "message_count": reader.message_count,
                "start_ns": reader.start_time if reader.message_count else 0,
                "duration_ns": reader.duration if reader.message_count else 0,
                "topics": topics}


def read_metadata(path: PathLike) -> dict:
    """The ``rosbag2_bagfile_information`` mapping of a bag's ``metadata.yaml``."""
    import yaml

    text = (Path(path) / "metadata.yaml").read_text(encoding="utf8")
    return yaml.safe_load(text)["rosbag2_bagfile_information"]


def _qos_text(qos: Qos) -> str:
    return (f"{qos.reliability.name.lower()}/{qos.durability.name.lower()}"
            f"/{qos.history.name.lower()}:{qos.depth}")
