import json
import subprocess
import sys


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "edgeslim", *args], capture_output=True, text=True, timeout=600)
    return proc


def test_inspect_json_is_one_object():
    proc = run_cli("inspect", "zoo:resnet56", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("macs", "flops", "params", "param_bytes", "peak_activation_bytes", "layers", "unsupported_ops"):
        assert key in result
    assert result["flops"] == 2 * result["macs"]


def test_train_writes_a_checkpoint(tmp_path):
    proc = run_cli("train", "zoo:resnet20", "--data", "digits", "--epochs", "1", "-o", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["epochs"] == 1 and 0 <= result["accuracy"] <= 100
    proc = run_cli("inspect", result["checkpoint"], "--json")
    assert json.loads(proc.stdout)["params"] > 0


def test_user_error_is_one_clear_line():
    proc = run_cli("inspect", "zoo:nonexistent")
    assert proc.returncode == 2
    assert "the zoo has" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("inspect", "zoo:nonexistent", "--json")
    assert "error" in json.loads(proc.stdout)
