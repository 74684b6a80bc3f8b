import pytest
import torch
from torch import nn

from edgeslim import count
from edgeslim.devices import estimate_model, get_device


def test_roofline_of_one_convolution_by_hand():
    conv = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1, bias=False))
    x = torch.randn(1, 64, 56, 56)
    e = estimate_model(conv, x, "jetson-orin-nano-8gb", precision="fp16")
    layer = e.layers[0]
    macs = 128 * 64 * 9 * 56 * 56
    assert layer["macs"] == macs
    assert layer["compute_ms"] == pytest.approx(2 * macs / 10.2e12 * 1e3)
    moved = (64 * 56 * 56 + 128 * 56 * 56 + 128 * 64 * 9) * 2  # fp16 input + output + weights
    assert layer["bytes"] == moved and layer["memory_ms"] == pytest.approx(moved / 68e9 * 1e3)
    assert layer["bound"] == "compute" and e.latency_ms == pytest.approx(layer["compute_ms"])


def test_slower_devices_and_precisions_estimate_longer():
    from edgeslim.models import build_model

    model, x = build_model("zoo:resnet20"), torch.randn(1, 3, 32, 32)
    cost = count(model, x)
    nano = estimate_model(model, x, "jetson-nano", cost=cost).latency_ms
    orin = estimate_model(model, x, "jetson-agx-orin-64gb", cost=cost).latency_ms
    h100 = estimate_model(model, x, "h100", cost=cost).latency_ms
    assert nano > orin > h100 > 0
    fp32 = estimate_model(model, x, "jetson-xavier-nx", precision="fp32", cost=cost)
    int8 = estimate_model(model, x, "jetson-xavier-nx", precision="int8", cost=cost)
    assert fp32.latency_ms > int8.latency_ms and fp32.memory["weights_bytes"] == 4 * int8.memory["weights_bytes"]
    nano_int8 = estimate_model(model, x, "jetson-nano", precision="int8", cost=cost)
    assert "no fast int8" in nano_int8.warnings[0]


def test_memory_budget_warns_when_a_model_does_not_fit():
    # 2.1 G parameters built on the meta device: counted without allocating them.
    big = nn.Sequential(nn.Linear(8192, 262144, device="meta"))
    e = estimate_model(big, torch.randn(1, 8192, device="meta"), "jetson-nano")
    mem = e.memory
    assert mem["weights_bytes"] == 2 * (8192 * 262144 + 262144) and mem["workspace_bytes"] == 512 * 2**20
    assert not mem["fits"] and e.warnings[0].startswith("does not fit: needs 4.50 GiB")
    assert estimate_model(big, torch.randn(1, 8192, device="meta"), "jetson-agx-orin-64gb").memory["fits"]
    assert get_device("jetson-nano").memory_gb == 4
