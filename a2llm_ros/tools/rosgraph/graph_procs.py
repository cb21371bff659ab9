"""Replay a bag through the a2llm_ros graph with the nodes in processes of their own.

:func:`run_graph_processes` is :func:`a2llm_ros.tools.rosgraph.graph_run.run_graph` for the
deployment layouts: the nodes run from their installed executables, started as
``launch/a2llm.launch.py`` starts them, and this process only holds the
*client*, which plays the bag as a ros-drivers microphone
(:class:`~a2llm_ros.tools.rosgraph.graph_run.TimedPlayer`) and records the outputs
(:class:`~a2llm_ros.tools.rosgraph.graph_run.Collector`).  The result is a
:class:`~a2llm_ros.tools.rosgraph.graph_run.GraphResult` with the turns from
:func:`~a2llm_ros.tools.rosgraph.graph_run.build_turns`, i.e. measured as in-process.

Layouts (:data:`LAYOUTS`):

* ``per-node`` (:data:`PER_NODE`): ``a2llm_node``, ``flame_retarget_node`` and
  ``face_preview_node`` each in its own process, with the launch file's
  arguments: ``--ros-args -r __node:=<name> [-r __ns:=<ns>] --params-file
  <config/a2llm.yaml> --params-file <launch_params.yaml>``; the second file holds
  what the launch file gives each node on top of the parameter file (its
  arguments' defaults: ``autostart``, ``audio.topic``, ``backend.kind``,
  ``model.checkpoint``, ``preset``, ``model``, ``use_sim_time``...) and
  :attr:`GraphConfig.params` / ``retarget_params`` / ``preview_params``;
* ``one-process`` (:data:`ONE_PROCESS`): ``a2llm bringup`` with the same two
  files, every node in one process.

Every process writes stdout and stderr to ``<log_dir>/<name>.log``.  Readiness
is waited for by condition, never by a fixed sleep: ``a2llm_node``'s log line
``active: listening`` (printed after its activation), ``flame_retarget_node``'s
``retargeting to``, and ``face_preview_node``'s subscription to its input
topic showing in the ROS graph (it logs nothing at start).  A configure failure
in the log, or a process that exits, ends the wait with
:class:`~a2llm_ros.tools.rosgraph.graph_run.GraphStartError`.

CPU seconds and RSS of every process (and of this one, the client) are sampled
with ``psutil`` every :attr:`GraphConfig.resource_period_s`.  At the end every
process gets SIGINT at once (as ``ros2 launch`` on Ctrl-C); its time to exit and
its exit status are recorded (SIGKILL after :data:`STOP_TIMEOUT_S`, recorded as
``killed``).  Times are ``time.monotonic()`` seconds, one clock for all
processes on Linux.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor

from a2llm_ros.tools.bags.io import bag_topics
from a2llm_ros.tools.rosgraph import graph_run as gr

__all__ = ["PER_NODE", "ONE_PROCESS", "LAYOUTS", "ProcessSpec", "ProcessRecord",
           "launch_parameters", "write_params_file", "process_specs", "run_graph_processes"]

PER_NODE = "per-node"
ONE_PROCESS = "one-process"
LAYOUTS = (ONE_PROCESS, PER_NODE)
A2LLM_NODE, RETARGET_NODE, PREVIEW_NODE = gr.GRAPH_NODES
#: Log line of a node that says it is ready (a2llm_node: printed after its activation).
READY_LINES = {A2LLM_NODE: "active: listening", RETARGET_NODE: "retargeting to"}
#: Log lines that end the start-up wait (a failed configure leaves the process running).
FAILURE_LINES = ("configure refused", "configure failed", "activate failed")
#: The executable of the one-process layout and its verb.
BRINGUP = ("a2llm", "bringup")
#: File (in the log directory) of the launch file's per-node parameters.
PARAMS_FILE_NAME = "launch_params.yaml"
#: After SIGINT: SIGKILL a process still running after this long (s).
STOP_TIMEOUT_S = 10.0
#: Poll period of the start-up and matching waits (s).
POLL_S = 0.02
#: Service calls to the a2llm_node (parameters, lifecycle state) give up after (s).
SERVICE_TIMEOUT_S = 10.0
#: Wait this long for the client's subscriptions to find the node publishers (s).
MATCH_TIMEOUT_S = 20.0
#: Characters of a process log quoted in start-up errors.
LOG_TAIL_CHARS = 2000
#: a2llm_node parameters the client reads (the values in force).
REMOTE_PARAMETERS = ("output.sample_format", "vad.min_silence_ms", "backend.kind",
                     "model.checkpoint", "model.warmup", "output.lead_s")
#: Output topics the client must be matched to before the replay starts.
MATCHED_TOPICS = ("conversation_state", "speech/audio_stamped", "flame/chunks")
#: Launch-file defaults of the arguments that become node parameters.
LAUNCH_DEFAULTS = {
    A2LLM_NODE: {"use_sim_time": False, "autostart": True, "backend.kind": "auto",
                 "model.checkpoint": "default", "backend.engine_file_path": "",
                 "audio.topic": "/audio/audio_stamped"},
    RETARGET_NODE: {"use_sim_time": False, "preset": "arkit52"},
    PREVIEW_NODE: {"use_sim_time": False, "model": "generated"},
}
MB = 1e6
#: Modules of the backend classes (their ``kind`` names the engine).
BACKEND_MODULES = ("a2llm_ros.engines.torch_backend", "a2llm_ros.engines.ort_backend",
                   "a2llm_ros.engines.tensorrt_runtime")


# ----------------------------------------------------------------------------- records

@dataclasses.dataclass
class ProcessSpec:
    """One process to start: its label, its command line, the nodes it holds."""

    name: str
    argv: List[str]
    nodes: Tuple[str, ...]


@dataclasses.dataclass
class ProcessRecord:
    """What happened to one process (times: monotonic s)."""

    name: str
    nodes: Tuple[str, ...]
    argv: List[str]
    log: str
    pid: int
    t_start: float
    t_ready: Optional[float] = None
    #: (t, CPU seconds user + system, RSS MB)
    samples: List[Tuple[float, float, float]] = dataclasses.field(default_factory=list)
    t_signal: Optional[float] = None
    #: SIGINT -> exit (s); None when it was not running at the signal.
    shutdown_s: Optional[float] = None
    exit_code: Optional[int] = None
    killed: bool = False

    def cpu_pct(self, t0: Optional[float], t1: Optional[float]) -> Optional[float]:
        """Mean CPU between the first sample at/after ``t0`` and the last at/before ``t1``
        (100 = one core); None with fewer than two samples there."""
        return cpu_pct(self.samples, t0, t1)

    def rss_peak_mb(self) -> Optional[float]:
        return max((s[2] for s in self.samples), default=None)

    def summary(self, t0: Optional[float], t1: Optional[float]) -> Dict[str, Any]:
        """JSON-ready figures (CPU over ``[t0, t1]``)."""
        return {"name": self.name, "nodes": list(self.nodes), "pid": self.pid,
                "cpu_pct": self.cpu_pct(t0, t1), "rss_peak_mb": self.rss_peak_mb(),
                "ready_s": None if self.t_ready is None else self.t_ready - self.t_start,
                "shutdown_s": self.shutdown_s, "exit_code": self.exit_code,
                "killed": self.killed, "log": self.log}


def cpu_pct(samples: Sequence[Tuple[float, float, float]], t0: Optional[float],
            t1: Optional[float]) -> Optional[float]:
    """Mean CPU % (100 = one core) of cumulative ``(t, cpu_s, rss)`` samples in [t0, t1]."""
    lo = -float("inf") if t0 is None else t0
    hi = float("inf") if t1 is None else t1
    rows = [s for s in samples if lo <= s[0] <= hi]
    if len(rows) < 2 or rows[-1][0] <= rows[0][0]:
        return None
    return 100.0 * (rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0])


# ----------------------------------------------------------------------------- launch files

def launch_parameters(cfg: gr.GraphConfig,
                      audio_params: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    """Node name -> the parameters the launch file gives it on top of the parameter file
    (its arguments' defaults), then ``audio_params`` (the bag's microphone topics) and
    the config's ``params`` / ``retarget_params`` / ``preview_params``."""
    a2llm = {**LAUNCH_DEFAULTS[A2LLM_NODE], "model.checkpoint": cfg.checkpoint,
             **audio_params, **cfg.params}
    return {A2LLM_NODE: a2llm,
            RETARGET_NODE: {**LAUNCH_DEFAULTS[RETARGET_NODE], **cfg.retarget_params},
            PREVIEW_NODE: {**LAUNCH_DEFAULTS[PREVIEW_NODE], **cfg.preview_params}}


def _nest(values: Dict[str, Any]) -> Dict[str, Any]:
    """Dotted parameter names -> the nested maps of a ROS 2 parameter file."""
    out: Dict[str, Any] = {}
    for name, value in values.items():
        *parents, leaf = name.split(".")
        level = out
        for part in parents:
            level = level.setdefault(part, {})
        level[leaf] = list(value) if isinstance(value, tuple) else value
    return out


def write_params_file(path: Path, per_node: Dict[str, Dict[str, Any]]) -> Path:
    """Write ``per_node`` as a ROS 2 parameter file (``/**/<node>`` sections)."""
    import yaml
    doc = {f"/**/{node}": {"ros__parameters": _nest(values)}
           for node, values in per_node.items()}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def executable(name: str) -> str:
    """Path of an installed console script (PATH, else next to this Python)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    raise gr.GraphStartError(f"executable {name!r} not found: install the package "
                             "(`make env`, or colcon build) and source its environment")


def graph_nodes(cfg: gr.GraphConfig) -> List[str]:
    """The nodes a config starts, a2llm_node first."""
    return ([A2LLM_NODE] + ([RETARGET_NODE] if cfg.retarget else [])
            + ([PREVIEW_NODE] if cfg.preview else []))


def process_specs(layout: str, cfg: gr.GraphConfig, ns: str, params_files: Sequence[str]
                  ) -> List[ProcessSpec]:
    """The processes of ``layout`` (``params_files``: parameter file, then launch file's)."""
    nodes = graph_nodes(cfg)
    files = [arg for f in params_files for arg in ("--params-file", str(f))]
    if layout == PER_NODE:
        ns_args = ["-r", f"__ns:={ns}"] if ns else []
        return [ProcessSpec(node, [executable(node), "--ros-args", "-r", f"__node:={node}",
                                   *ns_args, *files], (node,)) for node in nodes]
    if layout == ONE_PROCESS:
        argv = [executable(BRINGUP[0]), *BRINGUP[1:], "--config", str(params_files[0])]
        argv += ["--namespace", ns] if ns else []
        argv += [] if cfg.retarget else ["--no-retarget"]
        argv += ["--preview"] if cfg.preview else []
        argv += ["--ros-args", *files[2:]]
        return [ProcessSpec("bringup", argv, tuple(nodes))]
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def child_environment(domain: int) -> Dict[str, str]:
    """This environment, with the run's domain and unbuffered, uncoloured logs."""
    return dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1",
                RCUTILS_LOGGING_BUFFERED_STREAM="0", RCUTILS_COLORIZED_OUTPUT="0")


# ----------------------------------------------------------------------------- processes

class NodeProcess:
    """A started process: its log file (read incrementally) and its :class:`ProcessRecord`."""

    def __init__(self, spec: ProcessSpec, env: Dict[str, str], log_dir: Path):
        import psutil
        path = log_dir / f"{spec.name}.log"
        self._out = open(path, "wb")
        self.proc = subprocess.Popen(spec.argv, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        self.record = ProcessRecord(name=spec.name, nodes=spec.nodes, argv=list(spec.argv),
                                    log=str(path), pid=self.proc.pid, t_start=time.monotonic())
        self._ps = psutil.Process(self.proc.pid)
        self._child_cpu: Dict[int, float] = {}  # pid -> CPU s at its last sample
        self._log = open(path, "rb")
        self._raw = b""

    @property
    def name(self) -> str:
        return self.record.name

    def text(self) -> str:
        """The log so far."""
        self._raw += self._log.read()
        return self._raw.decode("utf-8", errors="replace")

    def tail(self) -> str:
        return self.text()[-LOG_TAIL_CHARS:]

    def running(self) -> bool:
        return self.proc.poll() is None

    def sample(self) -> None:
        """Append (t, CPU s, RSS MB) to the record (nothing once the process is gone),
        its child processes included (``a2llm bringup`` runs the preview in one)."""
        import psutil
        try:
            times = self._ps.cpu_times()
            rss = self._ps.memory_info().rss / MB
            children = self._ps.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            try:
                t = child.cpu_times()
                self._child_cpu[child.pid] = t.user + t.system  # last value kept at exit
                rss += child.memory_info().rss / MB
            except psutil.Error:
                pass
        cpu = times.user + times.system + sum(self._child_cpu.values())
        self.record.samples.append((time.monotonic(), cpu, rss))

    def interrupt(self, t_signal: float) -> None:
        """SIGINT, if it still runs (an exited process keeps ``shutdown_s`` None)."""
        self.record.t_signal = t_signal
        self._signalled = self.running()
        if self._signalled:
            self.proc.send_signal(signal.SIGINT)

    def wait_exit(self, timeout: float) -> None:
        """Wait for the exit after :meth:`interrupt`; SIGKILL past ``timeout``."""
        rec = self.record
        try:
            rec.exit_code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rec.exit_code, rec.killed = self.proc.wait(), True
        if getattr(self, "_signalled", False):
            rec.shutdown_s = time.monotonic() - rec.t_signal

    def close(self) -> None:
        if self.running():
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._log.close()


class CpuSampler:
    """Samples every process (and this one, as ``client``) every ``period`` s."""

    def __init__(self, procs: Sequence[NodeProcess], client: ProcessRecord, period: float):
        import psutil
        self.procs, self.client, self.period = list(procs), client, period
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="graph_cpu", daemon=True)

    def start(self) -> "CpuSampler":
        self._thread.start()
        return self

    def sample(self) -> None:
        for proc in self.procs:
            proc.sample()
        times = self._me.cpu_times()
        self.client.samples.append((time.monotonic(), times.user + times.system,
                                    self._me.memory_info().rss / MB))

    def _run(self) -> None:
        self.sample()
        while not self._stop.wait(self.period):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


# ----------------------------------------------------------------------------- services

def call_service(node, srv_type, name: str, request, timeout: float = SERVICE_TIMEOUT_S):
    """Call service ``name`` from ``node`` (spun elsewhere); the response, None on timeout."""
    client = node.create_client(srv_type, name)
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            return None
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        return future.result() if done.wait(timeout) else None
    finally:
        node.destroy_client(client)


def remote_parameters(node, target: str, names: Sequence[str]) -> Dict[str, Any]:
    """Parameter values of node ``target`` (fully qualified name)."""
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python
    resp = call_service(node, GetParameters, f"{target}/get_parameters",
                        GetParameters.Request(names=list(names)))
    if resp is None:
        raise gr.GraphStartError(f"{target}: no answer to get_parameters")
    return {n: parameter_value_to_python(v) for n, v in zip(names, resp.values)}


def lifecycle_state(node, target: str) -> str:
    """Lifecycle state label of ``target`` ("" when it does not answer)."""
    from lifecycle_msgs.srv import GetState
    resp = call_service(node, GetState, f"{target}/get_state", GetState.Request())
    return "" if resp is None else str(resp.current_state.label)


# ----------------------------------------------------------------------------- the run

class ProcessGraph:
    """The processes and the client of one run (see :func:`run_graph_processes`)."""

    def __init__(self, cfg: gr.GraphConfig, layout: str, log_dir=None):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if cfg.wrap_generator is not None or cfg.record or cfg.keep_questions:
            raise ValueError("wrap_generator, record and keep_questions need the in-process "
                             "graph (graph_run.run_graph)")
        self.cfg, self.layout = cfg, layout
        self.sidecar = gr.load_sidecar(cfg.sidecar)
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="a2llm_graph_"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.ns = "/" + cfg.namespace.strip("/") if cfg.namespace.strip("/") else ""
        self.node_fqn = gr.join_topic(self.ns, A2LLM_NODE)
        self.domain = gr.domain_id()
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=self.domain)
        self.executor = MultiThreadedExecutor(num_threads=gr.EXECUTOR_THREADS, context=self.ctx)
        self.spin_thread = threading.Thread(target=self.executor.spin, daemon=True,
                                            name="graph_client_executor")
        self.client = None
        self.player: Optional[gr.TimedPlayer] = None
        self.collector: Optional[gr.Collector] = None
        self.procs: List[NodeProcess] = []
        self.client_record = ProcessRecord(name="client", nodes=(), argv=list(sys.argv),
                                           log="", pid=os.getpid(), t_start=time.monotonic())
        self.sampler: Optional[CpuSampler] = None
        self.remote: Dict[str, Any] = {}

    # -- start
    def start(self) -> None:
        cfg = self.cfg
        self.spin_thread.start()
        self.client = rclpy.create_node("a2llm_graph_client", namespace=self.ns or "/",
                                        context=self.ctx)
        self.executor.add_node(self.client)
        audio_params, remap = gr.audio_topics(sorted(bag_topics(cfg.bag)), self.ns)
        self.player = gr.TimedPlayer(self.client, cfg.bag, rate=cfg.rate, remap=remap,
                                     wait_for_subscribers=cfg.wait_for_subscribers_s)
        launch_file = write_params_file(self.log_dir / PARAMS_FILE_NAME,
                                        launch_parameters(cfg, audio_params))
        files = ([self._params_file()] if cfg.params_file else []) + [str(launch_file)]
        env = child_environment(self.domain)
        for spec in process_specs(self.layout, cfg, self.ns, files):
            self.procs.append(NodeProcess(spec, env, self.log_dir))
        self.sampler = CpuSampler(self.procs, self.client_record, cfg.resource_period_s).start()
        self._wait_ready()
        self.remote = remote_parameters(self.client, self.node_fqn, REMOTE_PARAMETERS)
        self.collector = self._make_collector()
        self._wait_matched()

    def _params_file(self) -> str:
        from a2llm_ros.paths import config_file
        return config_file(self.cfg.params_file)

    def _make_collector(self) -> gr.Collector:
        from a2llm_ros.interfaces import detect_audio_flavour
        return gr.Collector(self.client, self.ns, detect_audio_flavour(),
                            str(self.remote["output.sample_format"]), self.cfg.keep_payloads,
                            self.node_fqn, self.cfg.retarget, markers=self.cfg.watch_markers)

    def _node_ready(self, proc: NodeProcess, node: str, text: str) -> bool:
        if node in READY_LINES:
            return READY_LINES[node] in text
        topic = gr.join_topic(self.ns, "flame/chunks")
        return any(info.node_name == node and info.node_namespace == (self.ns or "/")
                   for info in self.client.get_subscriptions_info_by_topic(topic))

    def _check_alive(self, proc: NodeProcess, text: str) -> None:
        """GraphStartError when ``proc`` exited or logged a configure failure."""
        failed = next((line for line in text.splitlines()
                       if any(f in line for f in FAILURE_LINES)), None)
        if failed is not None:
            raise gr.GraphStartError(f"{proc.name}: {failed.strip()} (log {proc.record.log})",
                                     "unconfigured")
        if not proc.running():
            raise gr.GraphStartError(f"{proc.name} exited with status {proc.proc.returncode} "
                                     f"while starting; log {proc.record.log}:\n{proc.tail()}")

    def _wait_ready(self) -> None:
        """Until every node of every process is ready (see the module docstring)."""
        pending = {(proc.name, node) for proc in self.procs for node in proc.record.nodes}
        deadline = time.monotonic() + self.cfg.activate_timeout_s
        while True:
            for proc in self.procs:
                text = proc.text()
                self._check_alive(proc, text)
                for node in proc.record.nodes:
                    if (proc.name, node) in pending and self._node_ready(proc, node, text):
                        pending.discard((proc.name, node))
                if proc.record.t_ready is None and not any(p == proc.name for p, _ in pending):
                    proc.record.t_ready = time.monotonic()
            if not pending:
                return
            if time.monotonic() > deadline:
                waiting = ", ".join(f"{node} ({name})" for name, node in sorted(pending))
                raise gr.GraphStartError(f"not ready after {self.cfg.activate_timeout_s:.0f} "
                                         f"s: {waiting}; logs in {self.log_dir}")
            time.sleep(POLL_S)

    def _wait_matched(self) -> None:
        """Until the client's subscriptions to the main outputs see their publishers."""
        cfg = self.cfg
        names = list(MATCHED_TOPICS) + (["face_commands"] if cfg.retarget else []) \
            + (["face_marker"] if cfg.preview and cfg.watch_markers else [])
        wanted = {gr.join_topic(self.ns, n) for n in names}
        subs = [s for s in self.collector.subs if s.topic_name in wanted]
        deadline = time.monotonic() + MATCH_TIMEOUT_S
        while not all(s.get_publisher_count() > 0 for s in subs):
            if time.monotonic() > deadline:
                missing = [s.topic_name for s in subs if s.get_publisher_count() == 0]
                raise gr.GraphStartError(f"no publisher found for {missing}")
            time.sleep(POLL_S)

    # -- run
    def play_and_wait(self) -> bool:
        """Play the bag, wait for the end (as in-process); True when it timed out."""
        return gr.replay_and_wait(self.cfg, self.sidecar, self.player, self.collector,
                                  _last_state_idle, float(self.remote["vad.min_silence_ms"]))

    # -- stop
    def stop_processes(self) -> None:
        """SIGINT to every process at once; wait for each (in parallel) and record."""
        t_signal = time.monotonic()
        for proc in self.procs:
            proc.interrupt(t_signal)
        waiters = [threading.Thread(target=p.wait_exit, args=(STOP_TIMEOUT_S,), daemon=True)
                   for p in self.procs]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join()

    def teardown(self) -> None:
        if self.player is not None:
            self.player.destroy(ack_timeout=0.5)
        try:
            self.stop_processes()
        finally:
            if self.sampler is not None:
                self.sampler.stop()
            for proc in self.procs:
                proc.close()
            self.executor.shutdown(timeout_sec=5.0)
            self.spin_thread.join(timeout=5.0)
            if self.collector is not None:
                self.collector.destroy(self.client)
            if self.client is not None:
                self.client.destroy_node()
            rclpy.try_shutdown(context=self.ctx)

    # -- result
    def result(self, timed_out: bool, t_end: float, lifecycle: str,
               alive: bool) -> gr.GraphResult:
        col, player, cfg = self.collector, self.player, self.cfg
        wall0 = player.wall0
        values = dict(col.diagnostics[-1][2]) if col.diagnostics else {}
        res = gr.GraphResult(
            config=cfg, turns=[], t_play_start=wall0,
            t_play_end=(wall0 + player.stats.wall_s) if wall0 is not None else None,
            t_end=t_end, timed_out=timed_out, play_stats=player.stats,
            utterance_ends=gr.utterance_ends(self.sidecar, player, wall0, cfg.rate),
            bag_origin=gr.bag_origin(self.sidecar, player, wall0, cfg.rate),
            states=list(col.states), texts=list(col.texts), audio=list(col.audio),
            frames=list(col.frames), chunks=list(col.chunks),
            diagnostics=list(col.diagnostics), logs=list(col.logs),
            face_commands=col.face_commands, markers=list(col.markers),
            resources=_summed_resources([p.record for p in self.procs]),
            node_values=values, lifecycle_state=lifecycle, threads_alive=alive, recorded={},
            backend_kind=_backend_kind(values, self.remote),
            node_config=dict(self.remote), probe=[],
            ros_offset_s=time.time() - time.monotonic(),
            warmup_s=float(values.get("warmup_s", 0.0)), layout=self.layout,
            processes=[p.record for p in self.procs], client=self.client_record)
        res.turns = gr.build_turns(res, float(self.remote["vad.min_silence_ms"]) / 1000.0)
        return res


def _backend_kind(values: Dict[str, str], remote: Dict[str, Any]) -> str:
    """The engine kind: ``backend.kind`` as configured; for ``auto``, the ``kind`` of the
    backend class the node reports on /diagnostics (as in-process)."""
    import importlib
    kind = values.get("backend_kind") or str(remote.get("backend.kind", ""))
    if kind not in ("", "auto"):
        return kind
    name = values.get("backend", kind)
    for module in BACKEND_MODULES:
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if getattr(cls, "kind", ""):
            return str(cls.kind)
    return name


def _last_state_idle(states) -> bool:
    """The node's idleness as seen from outside: its last conversation state is idle."""
    return not states or states[-1][1] == gr.IDLE


def _summed_resources(records: Sequence[ProcessRecord]) -> List[Tuple[float, float, float]]:
    """(t, CPU %, RSS MB) of all the processes together, per sampling round."""
    rounds = min((len(r.samples) for r in records), default=0)
    out = []
    for i in range(1, rounds):
        rows = [(r.samples[i - 1], r.samples[i]) for r in records]
        t = float(np.mean([b[0] for _, b in rows]))
        cpu = sum(100.0 * (b[1] - a[1]) / max(b[0] - a[0], 1e-6) for a, b in rows)
        out.append((t, cpu, sum(b[2] for _, b in rows)))
    return out


def run_graph_processes(cfg: gr.GraphConfig, layout: str = PER_NODE,
                        log_dir=None) -> gr.GraphResult:
    """Run the graph on ``cfg.bag`` in ``layout`` (see the module docstring); the logs and
    the launch parameter file go to ``log_dir`` (default: a new temporary directory).
    Raises :class:`~a2llm_ros.tools.rosgraph.graph_run.GraphStartError` when a node does not
    come up
    (every process is stopped first)."""
    graph = ProcessGraph(cfg, layout, log_dir)
    try:
        graph.start()
        timed_out = graph.play_and_wait()
        graph.sampler.sample()
        t_end = time.monotonic()
        state = lifecycle_state(graph.client, graph.node_fqn)
        alive = all(p.running() for p in graph.procs)
    finally:
        graph.teardown()
    return graph.result(timed_out, t_end, state, alive)
