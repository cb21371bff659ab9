"""Shared pytest setup.

Helpers the test modules import (``from conftest import ...``):

* :func:`require_ros` -- the ROS preamble: skip the module unless rclpy, the
  built interfaces and (if asked) the ros-drivers ``audio_common_msgs`` import.
* :func:`wait_for` / :func:`never` -- wait on a condition with a deadline
  instead of sleeping; the failure names what did not (or did) happen.

No busy-loop process.  Until 2026-12-05 ``ros``-marked tests ran beside a ``nice 19``
spinner that kept the 2-core VM's vCPUs awake (2026-11-24: barge-in output stopped
4411 ms after the onset on an idle VM, 67 ms with the spinner).  Measured again on
2026-12-05 on the development VM with no other session's spinner running: the
barge-in test stopped output 55-69 ms after the onset without it (5 runs) and
55-146 ms with it (5 runs); test_ros_a2llm_node took 28-30 s without and 29-32 s
with it, test_fault_matrix 43 s and 45 s; the 4.4 s stall did not come back.  (With
other sessions loading both cores, one of 3 runs without it stopped output at 262 ms
and failed, against 65-68 ms with it: contention, not the idle stall.)  So it was
removed.
"""
import os
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


@pytest.fixture(scope="session")
def default_model():
    """The shipped default checkpoint (one torch thread); skipped when it is not built."""
    import torch

    from a2llm_ros import checkpoint
    if not os.path.isfile(os.path.join(checkpoint.DEFAULT_CHECKPOINT, "config.json")):
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
