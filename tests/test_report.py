"""Reports: report.md + self-contained report.html, rendered in headless Chromium."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeslim.metrics import count
from edgeslim.models import CifarResNet
from edgeslim.report import write_report
from edgeslim.report.plots import SLIM_COLOR


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900)
        found = shutil.which("chromium")
    return found


@pytest.fixture(scope="module")
def chromium():
    path = _chromium()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return path


def _headless(chromium, tmp_path, *args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=120)


def _render(chromium, html_path, tmp_path):
    """(DOM after load, screenshot pixels) of a report opened from disk."""
    dom = _headless(chromium, tmp_path, "--dump-dom", f"file://{html_path}").stdout
    shot = tmp_path / "shot.png"
    _headless(chromium, tmp_path, "--window-size=1200,2400", f"--screenshot={shot}", f"file://{html_path}")
    import matplotlib.image

    return dom, matplotlib.image.imread(str(shot))[..., :3]


def _color_pixels(img, hex_color: str) -> int:
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]) / 255.0
    return int((np.abs(img - rgb).max(axis=-1) < 3 / 255).sum())


def _run(folder, width, accuracy, latency):
    x = torch.randn(1, 3, 32, 32)
    dense, slim = count(CifarResNet(20), x), count(CifarResNet(20, width=width), x)
    result = {"model": "zoo:resnet20", "method": "l1",
              "dense": {"accuracy": 98.0, "macs": dense.macs, "params": dense.params,
                        "latency_ms": {"p50": 1.0, "p90": 1.1, "p99": 1.2}},
              "slim": {"accuracy": accuracy, "macs": slim.macs, "params": slim.params,
                       "latency_ms": {"p50": latency, "p90": latency * 1.1, "p99": latency * 1.2}},
              "notes": ["<script>alert(1)</script> is shown as text"], "runtime": "onnxruntime-cpu"}
    return write_report(folder, result, dense.layers, slim.layers, title="a run")


def test_single_run_report_renders_its_plot(chromium, tmp_path):
    paths = _run(tmp_path / "run", 8, 97.0, 0.4)
    md = open(paths["markdown"]).read()
    assert "| MACs |" in md and "widths.png" in md
    html = open(paths["html"]).read()
    assert "<script>" not in html and "&lt;script&gt;" in html  # self-contained, no script, text escaped
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network
    dom, img = _render(chromium, paths["html"], tmp_path)
    assert len(re.findall(r'<img class="plot"[^>]*src="data:image/png;base64,', dom)) == 1
    assert 'id="plot-widths"' in dom
    # The slim bars are drawn in SLIM_COLOR: thousands of such pixels mean the plot really rendered.
    assert _color_pixels(img, SLIM_COLOR) > 2000
    saved = json.load(open(paths["json"]))
    assert saved["layers"]["slim"][0]["output_shape"][1] == 8


def test_report_command_compares_runs(chromium, tmp_path, capsys):
    from edgeslim.cli import main  # in-process: the real parser and run(), one interpreter start-up less

    _run(tmp_path / "half", 8, 97.0, 0.4)
    _run(tmp_path / "quarter", 4, 93.0, 0.2)
    out = tmp_path / "compared"
    assert main(["report", str(tmp_path / "half"), str(tmp_path / "quarter"), "-o", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["report"].endswith("report.html") and (out / "comparison.png").stat().st_size > 5000
    md = open(r["markdown"]).read()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| half") or line.startswith("| quarter")}
    assert rows["half"].rstrip(" |").endswith("2.50×") and rows["quarter"].rstrip(" |").endswith("5.00×")
    html = open(r["report"]).read()  # static HTML, no script: the source is the DOM
    assert 'id="plot-compare"' in html and 'id="plot-widths-0"' in html and 'id="plot-widths-1"' in html
    shot = tmp_path / "shot.png"
    _headless(chromium, tmp_path, "--window-size=1200,2400", f"--screenshot={shot}", f"file://{r['report']}")
    import matplotlib.image

    assert _color_pixels(matplotlib.image.imread(str(shot))[..., :3], SLIM_COLOR) > 2000

    # One folder: its report is rebuilt in place from report.json.
    os.remove(tmp_path / "half" / "report.html")
    assert main(["report", str(tmp_path / "half"), "--json"]) == 0
    assert (tmp_path / "half" / "report.html").stat().st_size > 10000


def test_report_of_a_folder_without_results_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeslim", "report", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "report.json" in proc.stderr


def test_prune_command_writes_the_reports(tmp_path, capsys):
    from edgeslim.cli import main

    assert main(["prune", "zoo:resnet20", "--target", "channels=0.5", "-o", str(tmp_path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    html = open(r["report_html"]).read()
    assert 'id="plot-widths"' in html and "data:image/png;base64," in html
    assert "| MACs |" in open(r["report"]).read()
    saved = json.load(open(tmp_path / "report.json"))
    widths = {l["name"]: l["output_shape"][1] for l in saved["layers"]["slim"]}
    dense = {l["name"]: l["output_shape"][1] for l in saved["layers"]["dense"]}
    assert widths["layer1.0.conv1"] < dense["layer1.0.conv1"]  # the widths before and after are both there
