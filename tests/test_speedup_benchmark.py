"""benchmarks/speedup.py --quick: the published table's script runs end to end on tiny inputs
(about a minute on a quiet 2-core machine, so marked slow)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edgeslim

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speedup.py"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(edgeslim, "prune") or not callable(getattr(edgeslim, "prune", None)),
                    reason="edgeslim.prune (the slimming engine) is not in this build")
def test_speedup_quick_runs_and_reports_every_cell(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", "--table", str(tmp_path / "t.json"),
                           "--thread-gain", "--drop-blocks", "all"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    rows = out["rows"]
    assert not [r for r in rows if "error" in r]
    assert {r["model"] for r in rows} == {"resnet18", "mobilenet_v2"}
    for model in ("resnet18", "mobilenet_v2"):
        variants = {r["variant"] for r in rows if r["model"] == model}
        assert variants == {"tp", "ours", "ours-matched"}
    for r in rows:
        assert r["macs"] < r["dense_macs"] and r["macs_reduction"] > 1
        assert r["speedup"] > 0 and r["speedup_over_macs"] == pytest.approx(r["speedup"] / r["macs_reduction"])
        assert isinstance(r["goal_met"], bool)
        if r["variant"] != "tp":  # the default allocate="measured" says which way it kept
            assert r["allocate"] == "measured" and r["allocation"] in {
                "importance/8", "importance/16", "latency/8", "latency/16"}, r
        if (os.cpu_count() or 1) > 1:  # dense also timed on one thread, to expose a neighbour holding a core
            assert r["dense_parallel_speedup"] > 0
            # --thread-gain: every model on one thread too; the quotient on all threads is the one-thread
            # quotient times the model's gain from the threads over dense's
            assert r["thread_gain"] > 0 and r["speedup_over_macs"] == pytest.approx(
                r["one_thread_speedup_over_macs"] * r["thread_gain"] / r["dense_parallel_speedup"])
    # --drop-blocks all: MobileNetV2's ten inverted residuals go where the target leaves room (at TP's MACs);
    # ResNet-18 has none edgeslim removes (its ReLU follows the addition), so it is cut by channels alone
    dropped = {(r["model"], r["variant"]): r.get("dropped_blocks") for r in rows if r["variant"] != "tp"}
    assert dropped[("mobilenet_v2", "ours-matched")] == 10
    assert dropped[("resnet18", "ours")] == dropped[("resnet18", "ours-matched")] == 0
    assert "resnet18: no residual block edgeslim can remove" in proc.stderr
    assert out["meta"]["runtime"] == "ort" and out["meta"]["input"] == [1, 3, 32, 32]
    assert json.loads((tmp_path / "t.json").read_text())["entries"], "the probes' table was not written"


@pytest.mark.skipif(not hasattr(edgeslim, "prune") or not callable(getattr(edgeslim, "prune", None)),
                    reason="the slimming engine has not landed")
def test_ort_threads_compares_every_setting_both_ways():
    """benchmarks/ort_threads.py, the evidence for OrtRunner's thread setting, on tiny inputs."""
    script = SCRIPT.parent / "ort_threads.py"
    proc = subprocess.run([sys.executable, str(script), "--model", "resnet18", "--input", "32", "--runs", "3",
                           "--warmup", "1", "--threads", "2", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)["rows"]
    cells = {(r["setting"], r["timing"], r["variant"]) for r in rows}
    variants = {"dense", "tp@0.5", "ours@0.5", "tp@0.7", "ours@0.7"}
    assert cells == {(s, t, v) for s in ("no-spin", "spin-in-run", "default") for t in ("interleaved", "alone")
                     for v in variants}
    for r in rows:
        assert r["p50_ms"] > 0
        assert (r["macs_reduction"] == 1) == (r["variant"] == "dense")
        assert r["speedup_over_macs"] == pytest.approx(r["speedup"] / r["macs_reduction"])


def _width_floor_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("width_floor", SCRIPT.parent / "width_floor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_width_floor_cuts_every_group_to_the_width():
    import torch
    import torchvision

    x = torch.randn(1, 3, 32, 32)
    dense = torchvision.models.mobilenet_v2().eval()
    slim = _width_floor_module().uniform_width(dense, x, 8)
    widths = [g.size for g in edgeslim.trace(slim, (x,)).prunable_groups]
    assert widths and max(widths) == 8
    assert slim.features[0][0].out_channels == 8 and slim.classifier[1].out_features == 1000


def test_width_floor_reports_the_goal_beside_the_floor():
    """benchmarks/width_floor.py on tiny inputs: every width and two random profiles at Torch-Pruning's
    MACs timed beside dense and Torch-Pruning."""
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "width_floor.py"), "--quick", "--widths", "8,16",
                           "--random", "2", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    rows = {r["variant"]: r for r in out["rows"]}
    assert list(rows) == ["dense", "tp@0.7", "width 8", "width 16", "random 1", "random 2"]
    assert rows["width 8"]["macs"] < rows["width 16"]["macs"] < rows["dense"]["macs"]
    assert out["floor"] in ("width 8", "width 16")
    tp = rows["tp@0.7"]
    assert out["goal_ms_at_tp_macs"] == pytest.approx(rows["dense"]["p50_ms"] / (0.9 * tp["macs_reduction"]))
    for key in ("random 1", "random 2"):  # counted on the cut model: at Torch-Pruning's MACs, or up to 3 % fewer
        assert tp["macs_reduction"] <= rows[key]["macs_reduction"] <= tp["macs_reduction"] / 0.97 + 1e-9
    assert out["best_random"] == max(("random 1", "random 2"), key=lambda k: rows[k]["speedup_over_macs"])


def test_width_floor_random_profiles_are_aligned_and_keep_the_macs():
    import numpy as np
    import torch
    import torchvision

    x = torch.randn(1, 3, 64, 64)
    dense = torchvision.models.mobilenet_v2().eval()
    module = _width_floor_module()
    graph = edgeslim.trace(dense, (x,))
    rng = np.random.default_rng(1)
    profiles = [p for p in (module.random_widths(graph, 0.25, 16, rng) for _ in range(3)) if p]
    assert len(profiles) >= 2 and profiles[0] != profiles[1]  # random, and most land on the MACs
    for widths in profiles:
        sizes = {g.id: g.size for g in graph.prunable_groups}
        assert all(n == sizes[g] or n % 16 == 0 for g, n in widths.items()), widths
        slim = module.cut_to(dense, graph, widths)
        ratio = edgeslim.metrics.count(slim, x).macs / edgeslim.metrics.count(dense, x).macs
        assert 0.25 * 0.97 <= ratio <= 0.25 + 1e-9, ratio


def _speedup_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("speedup", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speedup_flags_cells_too_noisy_to_trust():
    import io

    speedup = _speedup_module()
    row = {"model": "resnet50", "ratio": 0.7, "variant": "tp", "macs": 3.9e8, "dense_macs": 4.1e9, "macs_reduction": 10.5,
           "p50_ms": 6.4, "dense_p50_ms": 39.3, "speedup": 6.1, "speedup_over_macs": 0.58, "spread": 0.59,
           "dense_spread": 0.11, "goal_met": False}
    quiet = {**row, "variant": "ours", "spread": 0.03, "speedup_over_macs": 0.9, "goal_met": True}
    assert speedup.spread_note([quiet]) is None
    note = speedup.spread_note([row, quiet])
    assert "1 cell(s)" in note and "resnet50 tp@0.7 (0.59)" in note and "ours" not in note
    out = io.StringIO()
    speedup.print_table([row, quiet], out)
    lines = out.getvalue().splitlines()
    assert lines[2].endswith("| 0.59 ⚠ |") and lines[3].endswith("| 0.03 |")


def test_timing_blocks_times_every_model_under_every_protocol():
    """benchmarks/timing_blocks.py on tiny inputs: single runs, blocks and alone, for every model."""
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "timing_blocks.py"), "--quick", "--ratios", "0.5",
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["protocols"] == ["single", "blocks of 2", "blocks of 5", "blocks of 10", "alone"]
    assert out["variants"] == ["dense", "tp@0.5", "ours@tp0.5"]
    rows = {(r["protocol"], r["variant"]): r for r in out["rows"]}
    assert set(rows) == {(p, v) for p in out["protocols"] for v in out["variants"]}
    for (protocol, variant), r in rows.items():
        assert r["p50_ms"] > 0
        assert r["speedup"] == pytest.approx(rows[protocol, "dense"]["p50_ms"] / r["p50_ms"])
    tp, ours = rows["single", "tp@0.5"], rows["single", "ours@tp0.5"]
    assert ours["macs_reduction"] == pytest.approx(tp["macs_reduction"], rel=0.05)  # matched MACs
