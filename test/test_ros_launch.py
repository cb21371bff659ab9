"""Launch files, parameter file and ``a2llm bringup`` agree with the package.

launch_ros is not importable here, so the launch files are checked from
their source (ast): every executable they start is an installed entry point,
every parameter file exists, every LaunchConfiguration is declared (and every
declared argument used), every parameter they set exists on its node, and
``a2llm bringup`` offers the same arguments.  Then the bringup graph runs in
one process from config/a2llm.yaml.
"""
import argparse
import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml
from conftest import require_ros

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
PACKAGE = "a2llm_ros"


def _parse(name):
    return ast.parse((LAUNCH / name).read_text(), filename=name)


def _module_value(tree, name):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
    raise AssertionError(f"{name} not defined")


def _calls(tree, func):
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
            if name == func:
                out.append(node)
    return out


def _kw(call, name):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _declared(tree):
    return [k.value for k in _module_value(tree, "ARGUMENTS").keys]


def _used(tree):
    names = {c.args[0].value for c in _calls(tree, "LaunchConfiguration")
             if c.args and isinstance(c.args[0], ast.Constant)}
    try:
        names |= {e.value for e in _module_value(tree, "FORWARDED").elts}
    except AssertionError:
        pass
    return names


def _setup_entry_points():
    tree = ast.parse((ROOT / "setup.py").read_text())
    nodes = {}
    for elt in _module_value(tree, "NODE_ENTRY_POINTS").elts:
        name, target = (s.strip() for s in elt.value.split("="))
        nodes[name] = target
    text = (ROOT / "setup.py").read_text()
    assert '"a2llm = a2llm_ros.tools.cli:main"' in text
    nodes["a2llm"] = "a2llm_ros.tools.cli:main"
    return nodes


def _node_parameters():
    require_ros(interfaces=False)
    from a2llm_ros.ros.face_preview_node import PreviewNodeParams
    from a2llm_ros.ros.flame_retarget_node import RetargetNodeParams
    from a2llm_ros.ros.params import A2llmNodeConfig, flatten
    common = {"use_sim_time"}
    return {"a2llm_node": set(flatten(A2llmNodeConfig())) | common | {"autostart"},
            "flame_retarget_node": set(flatten(RetargetNodeParams())) | common,
            "face_preview_node": set(flatten(PreviewNodeParams())) | common}


def test_launch_arguments_declared_and_used():
    for name in ("a2llm.launch.py", "replay.launch.py"):
        tree = _parse(name)
        declared, used = _declared(tree), _used(tree)
        assert len(declared) == len(set(declared)), name
        assert used == set(declared), (name, set(declared) ^ used)
        assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description"
                   for n in tree.body), name
    # replay forwards only arguments a2llm.launch.py declares.
    main_args = set(_declared(_parse("a2llm.launch.py")))
    forwarded = {e.value for e in _module_value(_parse("replay.launch.py"), "FORWARDED").elts}
    assert forwarded <= main_args


@pytest.mark.ros
def test_launch_executables_and_parameters_exist():
    entry = _setup_entry_points()
    params = _node_parameters()
    tree = _parse("a2llm.launch.py")
    nodes = _calls(tree, "Node") + _calls(tree, "LifecycleNode")
    assert {_kw(c, "executable").value for c in nodes} == set(params)
    for call in nodes:
        assert _kw(call, "package").id == "PACKAGE"
        exe = _kw(call, "executable").value
        assert exe == _kw(call, "name").value
        assert exe in entry and (ROOT / "scripts" / exe).is_file(), exe
        module, func = entry[exe].split(":")
        assert callable(getattr(importlib.import_module(module), func))
        # Parameter overrides name real parameters of that node.
        for elt in _kw(call, "parameters").elts:
            if isinstance(elt, ast.Dict):
                keys = {k.value for k in elt.keys}
                assert keys <= params[exe], (exe, keys - params[exe])
    # Parameter files: PathJoinSubstitution([...share..., "config", <file>]).
    files = set()
    for tree in (_parse("a2llm.launch.py"), _parse("replay.launch.py")):
        for call in _calls(tree, "PathJoinSubstitution"):
            parts = [e.value for e in call.args[0].elts if isinstance(e, ast.Constant)]
            if parts and parts[0] in ("config", "launch"):
                files.add(ROOT.joinpath(*parts))
    assert ROOT / "config" / "a2llm.yaml" in files and ROOT / "launch" / "a2llm.launch.py" in files
    assert all(f.is_file() for f in files)
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"install\(DIRECTORY launch config", cmake)


def test_replay_runs_a2llm_bag_play():
    from a2llm_ros.tools.cli import VERBS
    entry = _setup_entry_points()
    tree = _parse("replay.launch.py")
    assert len(_calls(tree, "ExecuteProcess")) == 1
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_player")
    cmd = next(n.value for n in ast.walk(func) if isinstance(n, ast.Assign)
               and n.targets[0].id == "cmd").elts
    exe_parts = [e.value for e in cmd[0].args[0].elts if isinstance(e, ast.Constant)]
    assert exe_parts[-1] == "a2llm" and exe_parts[0] == "lib"
    assert "a2llm" in entry and (ROOT / "scripts" / "a2llm").is_file()
    assert "scripts/a2llm" in (ROOT / "CMakeLists.txt").read_text()
    assert [e.value for e in cmd[1:3]] == ["bag", "play"] and "bag" in VERBS
    assert isinstance(cmd[3], ast.Call) and cmd[3].args[0].value == "bag"
    # The options given exist in `a2llm bag play`.
    options = [e.value for e in cmd[4:] if isinstance(e, ast.Constant)
               and e.value.startswith("--")] + ["--clock"]
    from a2llm_ros.tools.commands.bag import add_play_arguments
    parser = argparse.ArgumentParser()
    add_play_arguments(parser)
    known = {s for a in parser._actions for s in a.option_strings}
    assert set(options) <= known, set(options) - known


def test_bag_play_command_present():
    path = ROOT / "a2llm_ros" / "tools" / "rosgraph" / "bag_play.py"
    assert path.exists(), "a2llm_ros/tools/rosgraph/bag_play.py (`a2llm bag play`) is missing"
    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


@pytest.mark.ros
def test_parameter_file_matches_node_parameters():
    data = yaml.safe_load((ROOT / "config" / "a2llm.yaml").read_text())
    params = _node_parameters()
    from a2llm_ros.tools.bench.turns import dotted as flat

    assert set(data) == {f"/**/{n}" for n in params}
    for key, section in data.items():
        node = key.split("/")[-1]
        names = set(flat(section["ros__parameters"]))
        assert names <= params[node], (node, names - params[node])
    # The a2llm_node values are valid and equal the dataclass defaults (one source of truth).
    from a2llm_ros.ros.params import A2llmNodeConfig, build_config, flatten
    values = flat(data["/**/a2llm_node"]["ros__parameters"])
    values.pop("autostart")
    cfg = build_config(A2llmNodeConfig(), values)
    defaults = flatten(A2llmNodeConfig())
    assert {k: v for k, v in flatten(cfg).items() if k in values} == \
        {k: defaults[k] for k in values}


def test_bringup_options_mirror_launch_arguments():
    from a2llm_ros.tools.rosgraph import bringup
    parser = argparse.ArgumentParser()
    bringup.add_arguments(parser)
    dests = {a.dest for a in parser._actions}
    declared = set(_declared(_parse("a2llm.launch.py")))
    assert set(bringup.LAUNCH_TO_OPTION) == declared
    assert set(bringup.LAUNCH_TO_OPTION.values()) <= dests
    args = parser.parse_args(["--checkpoint", "/ck", "--backend", "torch", "--mic-topic", "/m",
                              "--engine-path", "/e.plan", "--retarget-preset", "servo_head"])
    over = bringup.node_overrides(args)
    assert over["a2llm_node"] == {"autostart": True, "model.checkpoint": "/ck",
                                  "backend.kind": "torch", "audio.topic": "/m",
                                  "backend.engine_file_path": "/e.plan"}
    assert over["flame_retarget_node"] == {"preset": "servo_head"}
    from a2llm_ros.tools.cli import VERBS, _load
    assert "bringup" in VERBS and _load("bringup").HELP


@pytest.mark.ros
def test_bringup_graph_runs_from_parameter_file(tmp_path):
    rclpy = require_ros()
    import torch
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from ros_testing import Recorder, domain_id, unique_namespace
    from sensor_msgs.msg import JointState

    from a2llm_ros.checkpoint import init_model, save_checkpoint
    from a2llm_ros.config import A2LLMConfig
    from a2llm_ros.tools.rosgraph import bringup
    from a2llm_ros.ros.qos import output_qos
    torch.set_num_threads(1)
    save_checkpoint(init_model(A2LLMConfig.preset("tiny"), seed=0), str(tmp_path))
    parser = argparse.ArgumentParser()
    bringup.add_arguments(parser)
    ns = unique_namespace("bringup")
    args = parser.parse_args(["--config", "a2llm.yaml", "--namespace", ns,
                              "--checkpoint", str(tmp_path), "--retarget-preset", "servo_head",
                              "--ros-args", "-p", "output.lead_s:=0.15"])
    ctx = Context()
    rclpy.init(args=bringup.ros_arguments(args), context=ctx, domain_id=domain_id())
    nodes = bringup.create_nodes(args, ctx)
    executor = MultiThreadedExecutor(context=ctx)
    tester = rclpy.create_node("tester", namespace=ns, context=ctx)
    rec = Recorder(tester, {"face_commands": (JointState, output_qos(100))})
    for node in nodes + [tester]:
        executor.add_node(node)
    import threading
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        a2llm, retarget = nodes
        assert [n.get_fully_qualified_name() for n in nodes] == [
            f"{ns}/a2llm_node", f"{ns}/flame_retarget_node"]
        # Values from the file, the options and the extra ROS arguments.
        assert a2llm.get_parameter("vad.min_silence_ms").value == 600.0
        assert a2llm.get_parameter("listening.blink_interval_s").value == [3.0, 6.0]
        assert a2llm.get_parameter("model.checkpoint").value == str(tmp_path)
        assert a2llm.get_parameter("output.lead_s").value == 0.15
        assert retarget.get_parameter("preset").value == "servo_head"
        # autostart: the node configures and activates itself; the listening face drives
        # the servo head through the retarget node.
        assert rec.wait_for(lambda: a2llm.lifecycle_state == "active", 60.0)
        assert rec.wait_for(lambda: len(rec.get("face_commands")) >= 10, 20.0)
        msg = rec.get("face_commands")[-1][1]
        assert tuple(msg.name) == retarget.retargeter.channels and "jaw" in msg.name
        assert len(msg.position) == len(msg.name)
    finally:
        executor.shutdown(timeout_sec=2.0)
        bringup.destroy_nodes(nodes)
        tester.destroy_node()
        rclpy.try_shutdown(context=ctx)
        thread.join(timeout=5.0)
