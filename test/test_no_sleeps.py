"""Tests synchronise by waiting on conditions with deadlines (conftest.wait_for / never),
not by sleeping.  A ``time.sleep`` in test/ is accepted as the poll interval of a
``while`` loop with a deadline (the loop mentions ``deadline`` or reads the clock), or
with a ``sleep-ok`` comment on its line or in the comment lines just above it, saying
why it is no synchronisation wait (real-time pacing, for instance)."""
import ast
from pathlib import Path

TEST_DIR = Path(__file__).resolve().parent
CLOCKS = {"monotonic", "time", "perf_counter"}


def _is_sleep(node):
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "sleep" and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "time")


def _has_deadline(loop):
    for node in ast.walk(loop):
        if isinstance(node, ast.Name) and "deadline" in node.id:
            return True
        if isinstance(node, ast.Attribute) and node.attr in CLOCKS \
                and isinstance(node.value, ast.Name) and node.value.id == "time":
            return True
    return False


def _commented(lines, lineno):
    i = lineno - 1
    if "sleep-ok" in lines[i]:
        return True
    i -= 1
    while i >= 0 and lines[i].lstrip().startswith("#"):
        if "sleep-ok" in lines[i]:
            return True
        i -= 1
    return False


def unjustified_sleeps(path):
    """``file:line`` of every sleep in ``path`` that is neither a deadline poll nor commented."""
    text = path.read_text()
    lines, tree = text.splitlines(), ast.parse(text)
    polls = {id(n) for loop in ast.walk(tree) if isinstance(loop, ast.While)
             and _has_deadline(loop) for n in ast.walk(loop) if _is_sleep(n)}
    return [f"{path.name}:{n.lineno}: {lines[n.lineno - 1].strip()}" for n in ast.walk(tree)
            if _is_sleep(n) and id(n) not in polls and not _commented(lines, n.lineno)]


def test_every_sleep_in_the_tests_is_justified():
    bare = [hit for path in sorted(TEST_DIR.glob("*.py")) for hit in unjustified_sleeps(path)]
    assert not bare, "sleeps used to synchronise (wait on a condition instead):\n" + \
        "\n".join(bare)


def test_the_checker_tells_a_sleep_from_a_deadline_poll(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import time\n"
                      "time.sleep(0.5)\n"
                      "time.sleep(0.1)  # sleep-ok: pacing\n"
                      "deadline = time.monotonic() + 1\n"
                      "while time.monotonic() < deadline:\n"
                      "    time.sleep(0.01)\n"
                      "while True:\n"
                      "    time.sleep(0.2)\n")
    assert [hit.split(":")[1] for hit in unjustified_sleeps(sample)] == ["2", "8"]
