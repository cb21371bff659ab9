#!/usr/bin/env python3
"""Set up everything a2llm_ros needs, idempotently (``make env``).

Two modes, chosen automatically:

* ``system``: a ROS 2 distro (Humble, Jazzy, Kilted) is installed and sourced
  (``ROS_DISTRO`` set and ``rclpy`` importable by the system Python).  The
  virtual environment sees the system site-packages, no ROS wheels are
  installed, and colcon builds the package against ``/opt/ros/<distro>``.
* ``wheels``: nothing of ROS is installed.  ROS 2 Kilted core comes from the
  ``ros-*`` wheels on PyPI; their quirks are handled here: incomplete
  dependency metadata (requirements-ros.txt lists every wheel), CMake exports
  that name the wheel builder's ``/opt/python/cp311-cp311/...`` include dirs
  (rewritten inside the venv), ``AMENT_PREFIX_PATH``/``CMAKE_PREFIX_PATH``
  (set to the venv prefix) and the ``ros-wheels-bootstrapper`` re-exec (the
  environment file sets the library path and its guard variable, so Python
  starts once).

Steps, each skipped when its inputs are unchanged (a stamp file holds a hash
of the inputs): Debian packages, virtual environment and pinned Python
packages, colcon build of the interfaces (``msg/`` plus, where no installed
ROS provides it, the fallback copy of ``audio_common_msgs``), and the
environment file ``.venv/a2llm_env.sh`` that ``make`` sources and users can
source for a shell.

Only the standard library is used: this runs before the venv exists.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
WS = ROOT / ".a2llm_ws"
STAMPS = VENV / ".a2llm_stamps"
ENV_SH = VENV / "a2llm_env.sh"
VENDOR_AUDIO_MSGS = ROOT / "a2llm_ros" / "_vendor" / "audio_common_msgs"
TORCH_PIN = "torch==2.13.0"
DEBIAN_PACKAGES = {"espeak-ng": "espeak-ng", "libespeak-ng.so.1": "libespeak-ng1",
                   "cmake": "cmake", "g++": "g++"}
WHEEL_PY_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
# numpy's headers: the wheel builder's path, or one this script wrote before.
WHEEL_NUMPY_INCLUDE = re.compile(r"[^;\"\s]*/site-packages/numpy/_core/include")


def log(msg: str) -> None:
    print(f"[bootstrap] {msg}", flush=True)


def run(cmd, env=None, cwd=None, quiet=False) -> None:
    """Run a command, failing loudly with the command line on error."""
    log("$ " + " ".join(str(c) for c in cmd))
    out = subprocess.DEVNULL if quiet else None
    result = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, stdout=out)
    if result.returncode != 0:
        sys.exit(f"[bootstrap] command failed ({result.returncode}): {' '.join(map(str, cmd))}")


def digest(paths, extra: str = "") -> str:
    """Hash of file contents (directories recursively) plus ``extra``."""
    h = hashlib.sha256(extra.encode())
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.exists() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(ROOT)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def stamp_ok(name: str, value: str) -> bool:
    f = STAMPS / name
    return f.exists() and f.read_text() == value


def write_stamp(name: str, value: str) -> None:
    STAMPS.mkdir(parents=True, exist_ok=True)
    (STAMPS / name).write_text(value)


# ---------------------------------------------------------------- mode
def detect_mode() -> str:
    """``system`` when a sourced ROS 2 distro provides rclpy, else ``wheels``."""
    forced = os.environ.get("A2LLM_ROS_MODE")
    if forced in ("system", "wheels"):
        return forced
    distro = os.environ.get("ROS_DISTRO")
    if not distro or not Path(f"/opt/ros/{distro}").exists():
        return "wheels"
    probe = subprocess.run([sys.executable, "-c", "import rclpy"], capture_output=True)
    return "system" if probe.returncode == 0 else "wheels"


# ---------------------------------------------------------------- debian
def _have(name: str) -> bool:
    if name.endswith(".so.1"):
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
        return name in out
    return shutil.which(name) is not None


def ensure_debian(mode: str) -> None:
    """espeak-ng (data, tests), and a C/C++ toolchain + CMake for the colcon build."""
    missing = [pkg for name, pkg in DEBIAN_PACKAGES.items() if not _have(name)]
    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        missing.append(f"python{sys.version_info.major}.{sys.version_info.minor}-dev")
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit("[bootstrap] missing system packages: " + " ".join(missing)
                 + "\n  install them with: sudo apt-get install " + " ".join(missing))
    run(["apt-get", "update", "-qq"], quiet=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "install", "-y", "-qq", *missing], env=env, quiet=True)


# ---------------------------------------------------------------- venv
def venv_python() -> Path:
    return VENV / "bin" / "python"


def venv_env(mode: str) -> dict:
    """Environment for running venv tools during the bootstrap."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env.pop("PYTHONHOME", None)
    if mode == "wheels":
        env["LD_LIBRARY_PATH"] = os.pathsep.join(wheel_library_dirs() + [
            p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
        env["_ROS_WHEELS_BOOTSTRAP_COMPLETE"] = "1"
        env["AMENT_PREFIX_PATH"] = str(VENV)
        env["CMAKE_PREFIX_PATH"] = str(VENV)
    return env


def site_packages() -> Path:
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return VENV / "lib" / ver / "site-packages"


def wheel_library_dirs() -> list:
    """Library dirs the ROS wheels need (what ros-wheels-bootstrapper computes)."""
    dirs = [str(VENV / "lib")]
    dirs += sorted(str(p) for p in site_packages().glob("ros_*.libs") if p.is_dir())
    return dirs


def ensure_venv(mode: str) -> None:
    """Create the venv and install the pinned Python packages."""
    reqs = [ROOT / "requirements.txt", ROOT / "requirements-nodeps.txt", ROOT / "setup.py"]
    if mode == "wheels":
        reqs.append(ROOT / "requirements-ros.txt")
    key = digest(reqs, extra=mode + sys.version)
    if stamp_ok("venv", key) and venv_python().exists():
        return
    previous = (STAMPS / "mode").read_text() if (STAMPS / "mode").exists() else None
    if VENV.exists() and previous not in (None, mode):
        log(f"mode changed {previous} -> {mode}: recreating {VENV}")
        shutil.rmtree(VENV)
    if not venv_python().exists():
        args = [sys.executable, "-m", "venv", str(VENV)]
        if mode == "system":
            args.insert(3, "--system-site-packages")
        run(args)
    env = venv_env(mode)
    pip = [venv_python(), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run(pip + [TORCH_PIN], env=env)
    run(pip + ["-r", ROOT / "requirements.txt"], env=env)
    run(pip + ["--no-deps", "-r", ROOT / "requirements-nodeps.txt"], env=env)
    if mode == "wheels":
        run(pip + ["-r", ROOT / "requirements-ros.txt"], env=env)
    run(pip + ["--no-deps", "-e", ROOT], env=env)
    write_stamp("mode", mode)
    write_stamp("venv", key)


def numpy_include_link() -> Path:
    """A link to numpy's C headers outside the source tree.

    CMake refuses exported include dirs that lie inside the source directory,
    and the venv lives in the repository; so the exports name this link.
    """
    np_inc = subprocess.run([venv_python(), "-c", "import numpy; print(numpy.get_include())"],
                            env=venv_env("wheels"), capture_output=True,
                            text=True, check=True).stdout.strip()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "a2llm_ros"
    link = cache / hashlib.sha256(str(VENV).encode()).hexdigest()[:12] / "numpy_include"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if os.readlink(link) == np_inc:
            return link
        link.unlink()
    link.symlink_to(np_inc)
    return link


def fix_wheel_cmake_exports() -> int:
    """Point the wheels' CMake exports at this machine's Python and numpy headers."""
    py_inc = sysconfig.get_paths()["include"]
    np_inc = str(numpy_include_link())
    changed = 0
    for f in (VENV / "share").rglob("*.cmake"):
        text = f.read_text(errors="surrogateescape")
        fixed = WHEEL_PY_INCLUDE.sub(py_inc, WHEEL_NUMPY_INCLUDE.sub(np_inc, text))
        if fixed != text:
            f.write_text(fixed, errors="surrogateescape")
            changed += 1
    if changed:
        log(f"rewrote wheel-builder include paths in {changed} CMake files")
    return changed


# ---------------------------------------------------------------- colcon
def system_has_audio_msgs(mode: str) -> bool:
    """True when an installed ROS (not our fallback) provides audio_common_msgs."""
    if mode == "wheels":
        return False
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix and not prefix.startswith(str(WS)) and \
                Path(prefix, "share", "audio_common_msgs", "package.xml").exists():
            return True
    return False


def colcon_build(mode: str) -> None:
    """Build the interfaces (and the fallback audio_common_msgs where needed)."""
    fallback = not system_has_audio_msgs(mode)
    # config/ and launch/ are installed into share/ (config_file reads them there): a
    # change to them must rebuild, or the install keeps serving the old files.
    inputs = [ROOT / "msg", ROOT / "CMakeLists.txt", ROOT / "package.xml", ROOT / "scripts",
              ROOT / "config", ROOT / "launch", VENDOR_AUDIO_MSGS]
    distro = os.environ.get("ROS_DISTRO", "") if mode == "system" else ""
    key = digest(inputs, extra=f"{mode}:{fallback}:{distro}")
    if stamp_ok("colcon", key) and (WS / "install" / "local_setup.sh").exists():
        return
    if mode == "wheels":
        fix_wheel_cmake_exports()
    shutil.rmtree(WS, ignore_errors=True)
    src = WS / "src"
    src.mkdir(parents=True)
    base_paths = [str(ROOT)]
    if fallback:
        shutil.copytree(VENDOR_AUDIO_MSGS, src / "audio_common_msgs",
                        ignore=shutil.ignore_patterns("COLCON_IGNORE"))
        base_paths.insert(0, str(src))
        log("no installed audio_common_msgs: building the fallback copy into " + str(WS))
    env = venv_env(mode)
    colcon = shutil.which("colcon", path=env["PATH"]) or "colcon"
    run([colcon, "--log-base", WS / "log", "build", "--base-paths", *base_paths,
         "--build-base", WS / "build", "--install-base", WS / "install",
         "--event-handlers", "console_cohesion+", "status-",
         "--cmake-args", f"-DPython3_EXECUTABLE={venv_python()}",
         "-DCMAKE_BUILD_TYPE=Release",
         f"-DPython3_NumPy_INCLUDE_DIR={numpy_include_link()}"], env=env, cwd=WS, quiet=True)
    write_stamp("colcon", key)


# ---------------------------------------------------------------- env file
def write_env_file(mode: str) -> None:
    """Write .venv/a2llm_env.sh, sourced by make and by users wanting a shell."""
    lines = [
        "# Generated by tools/bootstrap.py: source it to enter the a2llm_ros environment.",
        f"export VIRTUAL_ENV='{VENV}'",
        f'export PATH="{VENV}/bin:$PATH"',
    ]
    if mode == "wheels":
        libs = ":".join(wheel_library_dirs())
        lines += [
            f'export AMENT_PREFIX_PATH="{VENV}${{AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}}"',
            f'export CMAKE_PREFIX_PATH="{VENV}${{CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}}"',
            f'export LD_LIBRARY_PATH="{libs}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"',
            "export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1",
            'export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"',
            "export ROS_DISTRO=\"${ROS_DISTRO:-kilted}\"",
        ]
    lines += [
        f"COLCON_CURRENT_PREFIX='{WS / 'install'}' . '{WS / 'install' / 'local_setup.sh'}'",
        "unset COLCON_CURRENT_PREFIX",
        # The source tree first: the install space holds the generated a2llm_ros.msg,
        # found through a2llm_ros.__path__ (pkgutil.extend_path).
        f'export PYTHONPATH="{ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"',
        f"export A2LLM_ROS_MODE='{mode}'",
        # Loopback-only DDS by default; a robot's owner overrides these.
        'export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"',
        'if [ "$ROS_DISTRO" = "humble" ]; then',
        '  export ROS_LOCALHOST_ONLY="${ROS_LOCALHOST_ONLY:-1}"',
        'fi',
    ]
    text = "\n".join(lines) + "\n"
    if not ENV_SH.exists() or ENV_SH.read_text() != text:
        ENV_SH.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("auto", "system", "wheels"), default="auto")
    args = parser.parse_args(argv)
    start = time.monotonic()
    if args.mode != "auto":
        os.environ["A2LLM_ROS_MODE"] = args.mode
    mode = detect_mode()
    ensure_debian(mode)
    ensure_venv(mode)
    colcon_build(mode)
    write_env_file(mode)
    log(f"environment ready ({mode} mode, {time.monotonic() - start:.1f} s); "
        f"enter it with: . {ENV_SH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
