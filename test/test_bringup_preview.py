"""``a2llm bringup --preview`` runs face_preview_node in a child process of its own (as the
launch file does), passes it the same parameter file and overrides, and takes it down
with itself on SIGINT; ``--preview-process shared`` keeps it in the bringup process."""
import argparse
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from a2llm_ros.tools.rosgraph import bringup

#: The issue's budget from SIGINT to exit (s); bringup waits for its child within it.
EXIT_BUDGET_S = 2.0
START_TIMEOUT_S = 120.0


def _args(argv):
    parser = argparse.ArgumentParser()
    bringup.add_arguments(parser)
    return parser.parse_args(argv)


def test_preview_command_is_the_executable_with_the_same_ros_arguments():
    args = _args(["--preview", "--preview-model", "/m/flame.npz", "--namespace", "ns"])
    ros_args = bringup.ros_arguments(args)
    argv = bringup.preview_command(args, ros_args)
    assert argv[:3] == [sys.executable, "-m", "a2llm_ros.ros.face_preview_node"]
    assert argv[3:3 + len(ros_args)] == ros_args and "__ns:=/ns" in argv
    assert argv[-2:] == ["-p", "model:=/m/flame.npz"]
    assert args.preview_process == "own"
    assert _args(["--preview", "--preview-process", "shared"]).preview_process == "shared"


@pytest.mark.ros
def test_bringup_preview_runs_in_a_child_process_and_exits_with_it(tmp_path):
    pytest.importorskip("rclpy", reason="rclpy missing: run through `make test`")
    import psutil
    from ros_testing import domain_id, unique_namespace
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id()), PYTHONUNBUFFERED="1",
               RCUTILS_LOGGING_BUFFERED_STREAM="0")
    log = tmp_path / "bringup.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "a2llm_ros", "bringup", "--preview", "--no-autostart",
             "--no-retarget", "--namespace", unique_namespace("preview_child")],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline, child_pid, text = time.monotonic() + START_TIMEOUT_S, None, ""
        while time.monotonic() < deadline and proc.poll() is None and \
                not (child_pid and "previewing" in text):  # the child's node is up
            text = log.read_text()
            found = re.search(r"face_preview_node \(process (\d+)\)", text)
            child_pid = int(found.group(1)) if found else None
            time.sleep(0.1)  # polling a log file written by other processes
        assert child_pid and "previewing" in text, text[-3000:]
        child = psutil.Process(child_pid)
        assert child.ppid() == proc.pid
        assert "a2llm_ros.ros.face_preview_node" in " ".join(child.cmdline())
        assert "a2llm_node" in log.read_text()  # the model's node stays in bringup
    finally:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=EXIT_BUDGET_S + 3.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    took = time.monotonic() - t0
    assert code == 0 and took <= EXIT_BUDGET_S, (code, took, log.read_text()[-3000:])
    assert not psutil.pid_exists(child_pid) or \
        psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
