"""Shared pytest setup.

Helpers the test modules import (``from conftest import ...``):

* :func:`require_ros` -- the ROS preamble: skip the module unless rclpy, the
  built interfaces and (if asked) the ros-drivers ``audio_common_msgs`` import.
* :func:`wait_for` / :func:`never` -- wait on a condition with a deadline
  instead of sleeping; the failure names what did not (or did) happen.

ROS graph tests and the 2-core test VMs: with the VM otherwise idle, the many
cross-thread wake-ups of a ROS graph in one process (DDS delivery threads,
executor, the node's worker and 25 fps clock threads) can become slow enough to
break real-time behaviour. ``ros``-marked tests therefore run with a ``nice 19``
spinner process that keeps the vCPUs awake; it yields to every other process.
This is a property of the test VM, not a requirement of the nodes, and is not
used outside the test suite. Set ``A2LLM_TEST_NO_SPINNER=1`` to run without it.
Measured on the development VM:

* 2026-11-24, barge-in test: output stopped 4411 ms after the interrupting
  speech onset with the VM idle, 67 ms with the spinner; ``time.sleep`` and
  ``Event.wait`` latencies were normal (10.2 ms for 10 ms) in both cases.
* 2026-12-05: the spoken-question and barge-in tests alone passed without the
  spinner (output stopped 55-90 ms after the onset, 9 runs; 55-146 ms with it)
  and test_ros_a2llm_node took as long (28-30 s, 29-32 s with it).  But of 7 runs
  of seven ROS test files in one session without it (tests with the old sleeps
  or the new condition waits), 3 failed on a near-idle VM: output stopped 1259
  and 1551 ms after the onset, and once the node heard no question within 30 s.
  So it stays.
"""
import os
import subprocess
import sys
import time

import pytest

RUN_MAKE_TEST = "run through `make test`"


def require_ros(interfaces: bool = True, audio: str = ""):
    """Skip the calling test module (or test) unless the ROS environment is there.

    ``interfaces``: the built ``a2llm_ros.msg`` too; ``audio``: ``"any"`` needs
    ``audio_common_msgs``, ``"ros_drivers"`` its ros-drivers flavour (AudioDataStamped),
    which the bag fixtures use.  Returns the ``rclpy`` module.
    """
    rclpy = pytest.importorskip("rclpy", reason=f"rclpy missing: {RUN_MAKE_TEST}")
    if interfaces:
        pytest.importorskip("a2llm_ros.msg",
                            reason=f"interfaces not built/sourced: {RUN_MAKE_TEST}")
    if audio:
        msgs = pytest.importorskip("audio_common_msgs.msg", reason=RUN_MAKE_TEST)
        if audio == "ros_drivers" and not hasattr(msgs, "AudioDataStamped"):
            pytest.skip("installed audio_common_msgs is not the ros-drivers flavour",
                        allow_module_level=True)
    return rclpy


def wait_for(predicate, timeout: float, what: str = "", poll: float = 0.01):
    """Poll ``predicate`` until it is truthy; return its value.

    Past ``timeout`` seconds raise ``AssertionError`` naming ``what`` did not happen
    (with ``what=""`` return the falsy value instead, for callers that assert).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            break
        time.sleep(poll)  # sleep-ok: poll interval of a deadline wait
    if not value and what:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
    return value


def never(predicate, within: float, what: str, poll: float = 0.01) -> None:
    """Assert ``predicate`` stays false for ``within`` seconds (fails as soon as it is true).

    For negative checks ("nothing more is published"): the window is what is tested.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert not predicate(), f"{what} within {within:g} s"
        time.sleep(poll)  # sleep-ok: poll interval
    assert not predicate(), f"{what} within {within:g} s"


_SPINNER = {}


def _start_spinner():
    if "proc" in _SPINNER or os.environ.get("A2LLM_TEST_NO_SPINNER") == "1":
        return
    _SPINNER["proc"] = subprocess.Popen(
        ["nice", "-n", "19", sys.executable, "-c", "while True: pass"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def default_model():
    """The shipped default checkpoint (one torch thread); skipped when it is not built."""
    import torch

    from a2llm_ros import checkpoint, checkpoint_files
    if not os.path.isfile(os.path.join(checkpoint_files.DEFAULT_CHECKPOINT, "config.json")):
        pytest.skip("the default checkpoint is not built (make default-checkpoint)")
    torch.set_num_threads(1)
    return checkpoint.load_checkpoint("default")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A randomly initialised ``tiny`` checkpoint (seed 0) for the ROS graph tests.

    Shared by the whole session: tests read it and copy it before changing it.
    """
    import torch

    from a2llm_ros.checkpoint import init_model, save_checkpoint
    from a2llm_ros.config import A2LLMConfig
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(init_model(A2LLMConfig.preset("tiny"), seed=0), str(out))
    return str(out)


@pytest.fixture(autouse=True)
def _keep_vcpus_awake_for_ros(request):
    """Start the spinner before the first ``ros`` test (see module docstring)."""
    if request.node.get_closest_marker("ros") is not None:
        _start_spinner()
    yield


def pytest_sessionfinish(session, exitstatus):
    proc = _SPINNER.pop("proc", None)
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def trained_refiner(model, seed: int = 5, scale: float = 0.05) -> None:
    """Small random weights in the tiny codec's mel refiner output layer (zero when
    untrained), so that a decode depends on the whole code window."""
    import torch
    last = model.token2wav.refiner.net[-1]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        last.weight.copy_(scale * torch.randn(last.weight.shape, generator=gen))
