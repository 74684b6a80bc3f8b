import json
import os
import subprocess
import sys


def test_demo_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeslim", "demo", "-o", str(tmp_path), "--epochs", "3",
                           "--finetune-epochs", "1", "--runs", "20", "--json"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "EDGESLIM_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    for side in ("dense", "slim"):
        assert {"accuracy", "macs", "params", "latency_ms"} <= set(r[side])
        assert {"p50", "p90", "p99"} <= set(r[side]["latency_ms"])
    assert r["onnx"]["max_abs_diff"] < 1e-3
    # the engine really removed channels: the slim model is smaller (target macs=0.5)
    assert r["slim"]["macs"] <= 0.5 * r["dense"]["macs"] and r["slim"]["params"] < r["dense"]["params"]
    # channel counts chosen from probes timed in ONNX Runtime on this CPU (the cache holds them)
    assert r["round_to"] == "device" and r["allocate"] == r["allocation"] == "latency"
    assert json.loads((tmp_path / "cache" / "latency" / "cpu-ort.json").read_text())["entries"]
    assert (tmp_path / "report.md").read_text().count("|") > 10
    assert (tmp_path / "widths.png").stat().st_size > 1000
    assert r["report"].endswith("report.md")
    html = (tmp_path / "report.html").read_text()  # self-contained: the widths plot is embedded
    assert r["report_html"].endswith("report.html") and 'id="plot-widths"' in html and "data:image/png;base64," in html
