"""`a2llm doctor` runs in the bootstrapped environment and names every backend's state."""
import subprocess
import sys


def test_doctor_names_every_backend():
    res = subprocess.run([sys.executable, "-m", "a2llm_ros", "doctor"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for name in ("torch (cpu)", "torch (cuda)", "onnxruntime", "tensorrt", "pycuda"):
        line = next((ln for ln in out.splitlines() if f"] {name} " in ln), None)
        assert line is not None, f"{name} missing from doctor output:\n{out}"
        assert line.strip().startswith(("[ok]", "[--]"))
    assert "backend 'auto' picks:" in out
    assert "a2llm_ros.msg" in out and "audio_common_msgs" in out
