"""The pure-Python core imports with no ROS environment and no rclpy on the path."""
import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "a2llm_ros"
ROS_ONLY = {("ros",), ("tools", "rosgraph")}  # subpackages allowed to import rclpy
ROS_MODULES = ("rclpy", "std_msgs", "sensor_msgs", "audio_common_msgs", "diagnostic_msgs",
               "visualization_msgs", "lifecycle_msgs", "rosgraph_msgs", "builtin_interfaces",
               "launch", "launch_ros")


def _core_modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        ros_only = rel.parts[:1] in ROS_ONLY or rel.parts[:2] in ROS_ONLY
        if ros_only or rel.parts[0] in ("msg", "_vendor", "__main__.py"):
            continue
        parts = [p for p in rel.with_suffix("").parts if p != "__init__"]
        yield path, ".".join(["a2llm_ros", *parts])


def test_core_sources_have_no_top_level_ros_imports():
    offenders = []
    for path, _ in _core_modules():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ROS_MODULES]
    assert not offenders, offenders


BLOCKER = """
import sys, importlib.abc
BLOCKED = %r
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError('blocked in this test: ' + name)
sys.meta_path.insert(0, Block())
import importlib
for mod in %r:
    importlib.import_module(mod)
leaked = [m for m in sys.modules if m.split('.')[0] in BLOCKED]
assert not leaked, leaked
print('imported', len(%r))
"""


def test_core_imports_without_ros():
    modules = [m for _, m in _core_modules()]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ROS_", "AMENT_", "COLCON_", "RMW_", "CMAKE_PREFIX"))}
    env["PYTHONPATH"] = str(ROOT)  # the source tree only: no install space, no rclpy path
    env["_ROS_WHEELS_BOOTSTRAP_COMPLETE"] = "1"
    code = BLOCKER % (ROS_MODULES, modules, modules)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {len(modules)}" in result.stdout
