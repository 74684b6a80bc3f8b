"""`edgeslim prune` and the engine's part of `edgeslim inspect`, through the real command line."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from edgeslim.cli import main
from edgeslim.models import load_model


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeslim", *args], capture_output=True, text=True, timeout=900)


def test_prune_with_data_finetunes_and_writes_a_loadable_checkpoint(tmp_path):
    proc = run_cli("prune", "zoo:resnet20", "--method", "l1", "--target", "macs=0.5", "--data", "digits",
                   "--finetune-epochs", "1", "-o", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["method"] == "l1"
    assert {"scoring_s", "surgery_s", "finetune_s"} <= set(r["timing"]) and r["timing"]["finetune_s"] > 0
    assert 0.49 <= r["slim"]["macs"] / r["dense"]["macs"] <= 0.5
    assert r["slim"]["params"] < r["dense"]["params"]
    for side in ("dense", "slim"):
        assert 0 <= r[side]["accuracy"] <= 100
    assert 0 <= r["accuracy_before_finetune"] <= 100
    assert r["equivalence_error"] < 1e-4
    plan = json.loads(open(r["plan"]).read())
    assert plan["format"] == "edgeslim-plan/1" and plan["groups"]
    loaded = load_model(r["checkpoint"])
    assert sum(p.numel() for p in loaded.model.parameters()) == r["slim"]["params"]
    assert loaded.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_prune_errors_are_one_clear_line(tmp_path, capsys):
    # in-process through the same entry point as `python -m edgeslim` (saves a torch import per call)
    assert main(["prune", "zoo:resnet20", "--target", "latency=3.5ms", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "latency" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["prune", "zoo:resnet20", "--target", "macs=0.001", "-o", str(tmp_path), "--json"]) == 2
    assert "closest reachable" in json.loads(capsys.readouterr().out)["error"]
    assert main(["prune", "zoo:resnet20", "--finetune-epochs", "2", "-o", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["prune", "zoo:resnet20", "--allocate", "latency", "--round-to", "8", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "allocate='latency' needs measured channel costs" in err and "round_to='device'" in err


def test_prune_measured_allocation_says_which_cut_it_kept(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))  # probes measured afresh, not from ~/.cache
    assert main(["prune", "zoo:resnet20", "--target", "macs=0.5", "--round-to", "device", "--device", "cpu",
                 "--allocate", "measured", "-o", str(tmp_path / "run"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["allocation"] in {"importance/8", "importance/16", "latency/8", "latency/16"}
    note = next(n for n in r["notes"] if n.startswith("allocate='measured'"))
    assert r["allocation"] in note and r["achieved"]["macs"] <= 0.5  # every way meets the target; rounding may overshoot
    # ResNet-20's 16-channel groups cannot shrink in multiples of 16: those cuts miss macs=0.5 and are left out
    assert r["allocation"].endswith("/8") and "importance/16 cannot reach the target" in note, note
    # the cuts were timed interleaved with dense: the kept one's median and dense's reach the JSON and the report
    dense_ms, slim_ms = r["dense"]["latency_ms"]["p50"], r["slim"]["latency_ms"]["p50"]
    assert (dense_ms, slim_ms) == (r["achieved"]["dense_latency_ms"], r["achieved"]["latency_ms"])
    assert f"dense {dense_ms:.3f} ms" in note and f"{r['allocation']} {slim_ms:.3f} ms" in note
    assert slim_ms < dense_ms  # half the MACs of ResNet-20 at 32x32 is measurably faster, interleaved
    report = Path(r["report"]).read_text()
    assert "latency p50 (ms)" in report and f"{dense_ms / slim_ms:.2f}× faster" in report


def test_prune_drop_blocks_saves_a_checkpoint_that_rebuilds(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["prune", "torchvision:mobilenet_v2", "--input", "1x3x64x64", "--target", "macs=0.3",
                 "--drop-blocks", "4", "-o", str(run_dir), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert len(r["dropped_blocks"]) == 4 and any(n.startswith("dropped 4 residual block") for n in r["notes"])
    assert r["achieved"]["macs"] <= 0.3 and r["equivalence_error"] < 1e-4
    assert json.loads((run_dir / "plan.json").read_text())["dropped"] == r["dropped_blocks"]
    loaded = load_model(r["checkpoint"])  # rebuilt from torchvision's architecture and the plan
    assert sum(p.numel() for p in loaded.model.parameters()) == r["slim"]["params"]
    assert main(["prune", "zoo:resnet20", "--drop-blocks", "2", "-o", str(tmp_path / "r20")]) == 2
    assert "no residual block" in capsys.readouterr().err


def test_inspect_reports_engine_coverage(capsys):
    assert main(["inspect", "torchvision:shufflenet_v2_x0_5", "--input", "1x3x64x64", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["unsupported_ops"] == []
    assert r["coverage"]["aten.chunk"]["category"] == "split"
    assert r["coverage"]["aten.conv2d"]["count"] == 56
    assert r["channel_groups"]["prunable"] > 10
