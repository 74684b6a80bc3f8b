"""The engine wired to measured latency: round_to="device" on this CPU and latency targets."""
import json

import pytest
import torch
import torchvision

import edgeslim
from edgeslim.compress.depth import BlocksOvershoot
from edgeslim.models import build_model
from edgeslim.runtime.target import ort_latency, prune_to_latency

X = torch.randn(1, 3, 32, 32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "latency" / "cpu-ort.json"


@pytest.mark.slow  # its widths come from timings: flaky when other work shares the CPU (run it on a quiet host)
def test_round_to_device_on_this_cpu_uses_measured_widths(cache):
    model = build_model("zoo:resnet20", width=24)  # 24/48/96-wide stages: room between multiples of 8
    result = edgeslim.prune(model, X, target={"channels": 0.6}, round_to="device", device="cpu", progress=False)
    table = json.loads(cache.read_text())
    assert table["runtime"] == "ort" and table["entries"], "no probe was measured"
    measured = {int(w) for batches in table["entries"].values() for batch in batches for w in batch}
    widths = [len(g["keep"]) for g in result.plan.groups]
    assert widths, "nothing was pruned"
    for n, g in zip(widths, result.plan.groups):
        # a candidate of the measured rounding: aligned, the whole group, or timed through its bucket
        assert n % 8 == 0 or n == g["size"] or (-(-n // 8) * 8 - 1) in measured, (g["id"], n)
    # ONNX Runtime's blocked kernels want whole blocks (8 channels with AVX2, 16 with AVX-512).
    assert sum(n % 8 == 0 for n in widths) >= 0.8 * len(widths), widths


@pytest.mark.slow
def test_latency_target_is_met_as_measured(cache):
    """60 % of the dense latency: the engine searches with the probe estimate, the slim model is
    then timed (10th percentile of interleaved runs: steady on a busy machine) and meets it."""
    model = build_model("zoo:resnet20", width=24).eval()
    dense_ms, _ = ort_latency(model, X, runs=60, quantile=10)
    target = 0.6 * dense_ms
    result = prune_to_latency(model, X, target, quantile=10, runs=60, progress=False)
    got = result.achieved
    assert got["latency_ms"] <= target * 1.15, got
    assert got["macs"] < 0.85 and got["latency_estimate_ms"] > 0
    # An impossible target names the closest reachable latency.
    with pytest.raises(ValueError, match="closest reachable is latency="):
        edgeslim.prune(model, X, target={"latency": dense_ms / 1000}, device="cpu", progress=False)


@pytest.mark.slow
def test_latency_target_with_dropped_blocks_is_met_as_measured(cache):
    """drop_blocks="all" with a latency target: the channels are cut from MobileNetV2 without its 10
    residual blocks, estimated from that model's probes and latency, and the measurement meets 35 %
    of the dense latency (one thread: steady); a target the drop alone meets is refused."""
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    dense_ms, _ = ort_latency(model, x, runs=60, quantile=10, threads=1)
    timing = {"quantile": 10, "runs": 60, "threads": 1, "progress": False}
    result = prune_to_latency(model, x, 0.35 * dense_ms, drop_blocks="all", **timing)
    got = result.achieved
    assert len(result.dropped) == 10 and result.plan.dropped == result.dropped
    assert got["latency_ms"] <= 0.35 * dense_ms * 1.15, got
    assert got["macs"] < 0.48 and got["dense_latency_ms"] > 2 * got["latency_ms"]  # channels were cut too
    with pytest.raises(BlocksOvershoot, match="already runs in"):
        prune_to_latency(model, x, 0.9 * dense_ms, drop_blocks="all", **timing)


def test_latency_target_without_a_device_is_a_clear_error(tmp_path, capsys):
    from edgeslim.cli import main

    assert main(["prune", "zoo:resnet20", "--target", "latency=3ms", "-o", str(tmp_path)]) == 2
    assert "--device cpu" in capsys.readouterr().err
