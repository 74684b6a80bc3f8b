"""Runtime-aware channel counts: probes, the cached latency table, and the rounding they drive."""
import json
import re

import numpy as np

import pytest
import torch
import torchvision
from torch import nn

from edgeslim.metrics import count
from edgeslim.runtime import OrtRunner, benchmark
from edgeslim.runtime.channels import (DeviceRounding, GroupSpec, LatencyTable, candidate_widths, probe_latency,
                                       record_layers)


class Group:
    """A channel group described by hand, shaped like the engine's ChannelGroup."""

    def __init__(self, gid, size, producers, consumers):
        self.id, self.size, self._p, self._c = gid, size, producers, consumers

    def producer_modules(self):
        return self._p

    def consumer_modules(self):
        return self._c


def inverted_residual_net(hidden: list[int], width: int = 32, side: int = 28) -> nn.Sequential:
    """MobileNetV2-style blocks (1x1 expand -> 3x3 depthwise -> 1x1 project) with the given hidden widths."""
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for h in hidden:
        layers += [nn.Conv2d(width, h, 1), nn.ReLU(), nn.Conv2d(h, h, 3, padding=1, groups=h), nn.ReLU(),
                   nn.Conv2d(h, width, 1)]
    return nn.Sequential(*layers)


def block_groups(n_blocks: int, size: int) -> list[Group]:
    # Block i occupies modules 2+5i .. 6+5i: expand (2+5i), depthwise (4+5i), project (6+5i).
    return [Group(f"block{i}", size, [str(2 + 5 * i), str(4 + 5 * i)], [str(4 + 5 * i), str(6 + 5 * i)])
            for i in range(n_blocks)]


def test_candidate_widths():
    assert candidate_widths(67, 96) == [72, 80, 88, 96]  # never an unaligned width but the whole group
    assert candidate_widths(72, 96) == [72, 80, 88, 96]
    assert candidate_widths(96, 96) == [96]
    assert candidate_widths(5, 10) == [8, 10]
    assert candidate_widths(33, 256) == [40, 48, 56, 64]
    # AVX-512 blocks (ONNX Runtime's default here when the CPU has them): multiples of 16 only
    assert candidate_widths(103, 1024, (16, 32)) == [112, 128]
    assert candidate_widths(5, 10, (16, 32)) == [10]  # no aligned width fits: the group stays whole
    with pytest.raises(ValueError, match="outside"):
        candidate_widths(0, 16)


def test_group_spec_of_a_torchvision_block_matches_the_counter():
    model = torchvision.models.mobilenet_v2()
    x = torch.randn(1, 3, 64, 64)
    layers = record_layers(model, x)
    block = ["features.2.conv.0.0", "features.2.conv.1.0", "features.2.conv.2"]
    spec = GroupSpec.from_modules(layers, 96, block[:2], block[1:])
    assert [len(spec.producers), len(spec.passthrough), len(spec.consumers)] == [1, 1, 1]
    assert spec.passthrough[0].depthwise and spec.passthrough[0].input_hw == (32, 32)
    # The probe at full width costs exactly what those three layers cost inside the model.
    per_layer = {l["name"]: l["macs"] for l in count(model, x).layers}
    assert spec.macs(96) == sum(per_layer[b] for b in block)
    probe = spec.probe(40)
    (out,) = probe(*spec.example_inputs())
    assert out.shape == (1, 24, 16, 16) and probe.passthrough[0].groups == 40
    assert spec.signature() == GroupSpec.from_modules(record_layers(model, x), 96, block[:2], block[1:]).signature()
    with pytest.raises(ValueError, match="did not run"):
        GroupSpec.from_modules(layers, 96, ["features.99"], block[1:])


def test_probe_sees_the_runtime_prefer_aligned_widths():
    """ONNX Runtime's blocked CPU kernels: a 64-wide group runs faster than a 63-wide one."""
    model = inverted_residual_net([96])
    spec = GroupSpec.from_group(record_layers(model, torch.randn(1, 3, 28, 28)), block_groups(1, 96)[0])
    lat = probe_latency(spec, [63, 64], runs=40)
    assert lat[64] < lat[63]


def test_device_rounding_picks_fast_widths_and_caches_them(tmp_path, monkeypatch):
    x = torch.randn(1, 3, 28, 28)
    dense = inverted_residual_net([96, 96, 96])
    table = LatencyTable(path=tmp_path / "cpu-ort.json")
    rounding = DeviceRounding(dense, x, table=table)
    groups = block_groups(3, 96)
    candidates = candidate_widths(45, 96, rounding.alignments)  # 48 and 64 (AVX-512), also 56 (AVX2)
    chosen = [rounding(g, 45) for g in groups]
    assert all(c in candidates for c in chosen)
    assert set(rounding.decisions) == {"block0", "block1", "block2"}
    saved = json.loads((tmp_path / "cpu-ort.json").read_text())
    assert saved["runtime"] == "ort" and len(saved["entries"]) == 1  # three identical blocks share one probe
    assert [set(batch) for batch in next(iter(saved["entries"].values()))] == [{str(w) for w in candidates}]

    # A second rounding on the same table measures nothing and decides the same.
    import edgeslim.runtime.channels as channels

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again although the table has every width")

    monkeypatch.setattr(channels, "probe_latency", no_measuring)
    again = DeviceRounding(dense, x, table=LatencyTable(path=tmp_path / "cpu-ort.json"))
    assert [again(g, 45) for g in groups] == chosen
    monkeypatch.undo()

    # The whole narrowed model: the chosen widths beat the naive ones on the runtime, interleaved.
    from edgeslim.export import export_onnx

    naive, rounded = inverted_residual_net([45] * 3), inverted_residual_net(chosen)
    paths = {k: export_onnx(m.eval(), x, tmp_path / f"{k}.onnx", simplify=False).path
             for k, m in (("naive", naive), ("rounded", rounded))}
    res = benchmark({k: OrtRunner(p) for k, p in paths.items()}, runs=40, warmup=5, memory=False)
    assert res["rounded"].latency_ms.p50 < res["naive"].latency_ms.p50


def test_table_from_another_host_is_ignored(tmp_path):
    path = tmp_path / "t.json"
    table = LatencyTable(path=path)
    table.put("abc", {8: 1.0})
    table.save()
    assert LatencyTable(path=path).get("abc", [8]) == {8: 1.0}
    data = json.loads(path.read_text())
    data["host"]["runtime_version"] = "0.0.0"
    path.write_text(json.dumps(data))
    assert LatencyTable(path=path).get("abc", [8]) is None


def test_table_compares_widths_only_within_one_batch(tmp_path):
    """Two batches timed at different moments (here: the second on a slower machine) are never
    mixed: asking for widths that no single batch holds means measuring them together again."""
    path = tmp_path / "t.json"
    table = LatencyTable(path=path)
    table.put("g", {16: 1.0, 32: 2.0})
    table.put("g", {24: 3.0, 32: 4.0})
    assert table.get("g", [16, 32]) == {16: 1.0, 32: 2.0}
    assert table.get("g", [24, 32]) == {24: 3.0, 32: 4.0}
    assert table.get("g", [32]) == {32: 4.0}  # the latest batch that has it
    assert table.get("g", [16, 24]) is None
    table.save()
    assert LatencyTable(path=path).get("g", [16, 24]) is None
    assert LatencyTable(path=path).get("g", [24, 32]) == {24: 3.0, 32: 4.0}


def test_latency_model_estimates_a_narrowed_model(tmp_path):
    """The probe-based estimate of a hand-narrowed model lands near its measured latency (as a
    fraction of the dense model's, both timed interleaved)."""
    from edgeslim.export import export_onnx
    from edgeslim.runtime.channels import LatencyModel

    x = torch.randn(1, 3, 28, 28)
    dense, slim = inverted_residual_net([96] * 3), inverted_residual_net([48] * 3)
    paths = {k: export_onnx(m.eval(), x, tmp_path / f"{k}.onnx", simplify=False).path
             for k, m in (("dense", dense), ("slim", slim))}
    # One thread for probes and models alike: under pytest -n 2 the other worker holds the second
    # core, and two-thread timings of a 0.2 ms model then jump between modes.
    res = benchmark({k: OrtRunner(p, threads=1) for k, p in paths.items()}, runs=60, warmup=5, memory=False)
    dense_ms, slim_ms = res["dense"].latency_ms.p50, res["slim"].latency_ms.p50
    model = LatencyModel(DeviceRounding(dense, x, table=LatencyTable(path=tmp_path / "t.json"), threads=1), dense_ms)
    groups = block_groups(3, 96)
    estimate = model.estimate(groups, {g.id: 48 for g in groups})
    assert estimate < dense_ms
    assert abs(estimate / dense_ms - slim_ms / dense_ms) < 0.25, (estimate, slim_ms, dense_ms)
    assert model.estimate(groups, {}) == dense_ms


@pytest.mark.slow
def test_probes_of_every_group_of_real_networks_export_and_run():
    """Probes for groups with pooling between producers (a ResNet stem coupled to its first stage),
    flattened linear consumers (VGG) and depthwise layers (MobileNetV2) build, export and run."""
    import io
    import warnings

    cases = {
        "resnet18": (["conv1", "layer1.0.conv2", "layer1.1.conv2"],
                     ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"], 64),
        "vgg11": (["features.18"], ["classifier.0"], 512),
        "mobilenet_v2": (["features.17.conv.0.0", "features.17.conv.1.0"],
                         ["features.17.conv.1.0", "features.17.conv.2"], 960),
    }
    for name, (producers, consumers, size) in cases.items():
        model = torchvision.models.get_model(name)
        layers = record_layers(model, torch.randn(1, 3, 64, 64))
        spec = GroupSpec.from_modules(layers, size, producers, consumers)
        probe = spec.probe(size // 2 - 3).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(probe, spec.example_inputs(), io.BytesIO(), opset_version=17, dynamo=False)
        outs = probe(*spec.example_inputs())
        assert all(torch.isfinite(o).all() for o in outs), name
    assert spec.repeat_scale() == 1.0
    resnet = GroupSpec.from_modules(record_layers(torchvision.models.resnet50(), torch.randn(1, 3, 64, 64)), 256,
                                    ["layer1.0.conv3", "layer1.0.downsample.0", "layer1.1.conv3", "layer1.2.conv3"],
                                    ["layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1", "layer2.0.downsample.0"])
    # The three conv3 and the stride-1 downsample have one shape, and so have two of the conv1: probed
    # once each, counted as often as they occur.
    assert len(resnet.producers) == 1 and len(resnet.consumers) == 3 and resnet.repeats == (4, 2, 1, 1)
    assert resnet.repeat_scale() > 1.5


def test_sliced_onnx_probe_equals_the_probe_at_that_width():
    """The ONNX probe at width n (sliced from the full-width export) computes what the PyTorch probe
    at width n computes with the same weights."""
    import onnxruntime as ort

    from edgeslim.runtime.channels import OnnxProbe

    model = torchvision.models.mobilenet_v2()
    layers = record_layers(model, torch.randn(1, 3, 64, 64))
    for producers, consumers, size in ((["features.2.conv.0.0", "features.2.conv.1.0"], ["features.2.conv.2"], 96),
                                       (["features.18.0"], ["classifier.1"], 1280)):
        spec = GroupSpec.from_modules(layers, size, producers, consumers)
        template = OnnxProbe(spec)
        for n in (size, size // 2 + 3):
            sess = ort.InferenceSession(template.model(n), providers=["CPUExecutionProvider"])
            feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), template.inputs)}
            got = sess.run(None, feeds)[0]
            # The PyTorch probe at width n with the exported full-width weights, sliced the same way.
            from onnx import numpy_helper

            weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in template.proto.graph.initializer}
            small = spec.probe(n)
            small.load_state_dict({name: weights[name].narrow(template.slices[name][0], 0, n * template.slices[name][1])
                                   if name in template.slices else weights[name] for name in small.state_dict()})
            with torch.no_grad():
                want = small.eval()(*template.inputs)[0].numpy()
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def mixed_net() -> nn.Sequential:
    """A thin inverted-residual block at 56x56 (8 -> 96 -> 8: depthwise and memory-bound, many ms per
    MAC) and, after a 4x pooling, two wide 3x3 convolutions at 14x14 (compute-bound, few ms per MAC)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 96, 1), nn.ReLU(), nn.Conv2d(96, 96, 3, padding=1, groups=96), nn.ReLU(), nn.Conv2d(96, 8, 1),
        nn.AvgPool2d(4),
        nn.Conv2d(8, 96, 3, padding=1), nn.ReLU(), nn.Conv2d(96, 96, 3, padding=1))


def test_channel_cost_is_measured_where_the_runtime_spends_time(tmp_path):
    x = torch.randn(1, 3, 56, 56)
    # One thread: two-thread probes beside the other pytest worker measure the neighbour, not the
    # layers (the 3x3 convolutions lose their second core now and then).
    rounding = DeviceRounding(mixed_net(), x, table=LatencyTable(path=tmp_path / "t.json"), runs=30, threads=1)
    block = Group("block", 96, ["2", "4"], ["4", "6"])
    dense3x3 = Group("dense3x3", 96, ["8"], ["10"])
    per_channel = {g.id: rounding.channel_cost(g) for g in (block, dense3x3)}
    assert per_channel["block"] > 0 and per_channel["dense3x3"] > 0, per_channel
    per_mac = {g.id: rounding.channel_cost(g, per="macs") for g in (block, dense3x3)}
    assert per_mac["block"] > 1.5 * per_mac["dense3x3"] > 0, per_mac  # ~2.2x on one thread, here
    with pytest.raises(ValueError, match="per must be"):
        rounding.channel_cost(block, per="flops")


def test_latency_allocation_takes_channels_where_they_cost_time(tmp_path):
    import edgeslim

    x = torch.randn(1, 3, 56, 56)
    torch.manual_seed(0)
    net = mixed_net().eval()
    rounding = DeviceRounding(net, x, table=LatencyTable(path=tmp_path / "t.json"), runs=30, threads=1)
    widths = {}
    for allocate in ("importance", "latency"):
        result = edgeslim.prune(net, x, target={"channels": 0.6}, round_to=rounding, allocate=allocate, progress=False)
        assert result.achieved["channels"] <= 0.6 + 1e-9
        widths[allocate] = (result.model[4].out_channels, result.model[8].out_channels)
    # Same channel budget; the latency allocation narrows the depthwise block (slow per MAC) more
    # and the compute-bound 3x3 convolutions less.
    assert widths["latency"][0] < widths["importance"][0], widths
    assert widths["latency"][1] >= widths["importance"][1], widths
    with pytest.raises(ValueError, match="allocate='latency' needs measured channel costs"):
        edgeslim.prune(net, x, target={"channels": 0.6}, round_to=8, allocate="latency", progress=False)
    with pytest.raises(ValueError, match="allocate must be"):
        edgeslim.prune(net, x, target={"channels": 0.6}, allocate="speed", progress=False)

    # measured: both allocations, each on widths in multiples of 8 and of 16, timed whole, the fastest kept
    coarser = rounding.coarser()
    assert coarser.alignments == (16, 32) and coarser.table is rounding.table and rounding.alignments == (8, 16, 32)
    result = edgeslim.prune(net, x, target={"channels": 0.6}, round_to=rounding, allocate="measured", progress=False)
    note = next(n for n in result.notes if n.startswith("allocate='measured'"))
    kept = re.match(r"allocate='measured': (\w+)/(\d+) kept \((.*)\)", note)
    assert kept and result.allocation == f"{kept[1]}/{kept[2]}", note
    timed = {label: float(ms) for label, ms in re.findall(r"(\w+/\d+) ([\d.]+) ms", kept[3])}
    assert result.allocation in timed and set(timed) <= {"importance/8", "importance/16", "latency/8", "latency/16"}
    fastest = min(timed.values())
    assert timed[result.allocation] <= fastest * (1 + rounding.tolerance), note
    assert all(timed[label] > fastest * (1 + rounding.tolerance) for label in timed
               if list(timed).index(label) < list(timed).index(result.allocation)), note
    # timed interleaved with dense: the medians are in achieved
    assert result.achieved["latency_ms"] == pytest.approx(timed[result.allocation], abs=5e-4)
    assert f"dense {result.achieved['dense_latency_ms']:.3f} ms" in note
    assert result.achieved["latency_ms"] < result.achieved["dense_latency_ms"]
    widths = (result.model[4].out_channels, result.model[8].out_channels)
    assert all(w % int(kept[2]) == 0 or w == 96 for w in widths), (widths, note)
    with pytest.raises(ValueError, match="allocate='measured' needs measured channel costs"):
        edgeslim.prune(net, x, target={"channels": 0.6}, round_to=8, allocate="measured", progress=False)


def test_time_models_times_whole_models_on_the_rounding_runtime(tmp_path):
    import edgeslim

    x = torch.randn(1, 3, 56, 56)
    torch.manual_seed(0)
    net = mixed_net().eval()
    rounding = DeviceRounding(net, x, table=LatencyTable(path=tmp_path / "t.json"), runs=30)
    slim = edgeslim.prune(net, x, target={"macs": 0.25}, round_to=8, progress=False).model
    ms = rounding.time_models({"dense": net, "slim": slim}, x)
    assert set(ms) == {"dense", "slim"} and all(v > 0 for v in ms.values()), ms
    assert ms["slim"] < ms["dense"], ms  # 4x fewer MACs, on widths that are multiples of 8
    with pytest.raises(ValueError, match="single-input"):
        rounding.time_models({"dense": net}, (x, x))


def test_a_target_the_measured_widths_cannot_reach_falls_back_to_plain_multiples(tmp_path):
    """A measured rounding that keeps every channel its probes call free (here: any width within
    1000 % of the fastest) cannot reach a small MACs target; the target comes first, so the engine
    rounds up to plain multiples of the smallest alignment instead, and says so."""
    import edgeslim
    from edgeslim.compress.targets import UnreachableTarget, solve

    x = torch.randn(1, 3, 28, 28)
    net = inverted_residual_net([96] * 3).eval()
    generous = DeviceRounding(net, x, table=LatencyTable(path=tmp_path / "t.json"), runs=5, tolerance=10.0)
    graph = edgeslim.trace(net, (x,))
    scores = {g.id: torch.ones(g.size) for g in graph.prunable_groups}
    with pytest.raises(UnreachableTarget):
        solve(graph, scores, {"macs": 0.25}, generous)
    result = edgeslim.prune(net, x, target={"macs": 0.25}, round_to=generous, progress=False)
    assert result.achieved["macs"] <= 0.25
    assert any("rounded up to multiples of 8" in n for n in result.notes), result.notes
    widths = [m.out_channels for m in result.model if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths
    # Cut four ways, each falls back; the notes describe the kept cut only, so the fallback is said once.
    measured = edgeslim.prune(net, x, target={"macs": 0.25}, round_to=generous, allocate="measured", progress=False)
    assert measured.achieved["macs"] <= 0.25
    assert sum("rounded up to multiples of" in n for n in measured.notes) == 1, measured.notes
