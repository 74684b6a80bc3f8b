"""The slimming engine on small real models: channel groups, surgery, proof, plans, targets, errors."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeslim
from edgeslim.compress import (PruningPlan, UnsupportedOpError, apply_plan, equivalence_error, make_plan,
                               masked_equivalent, register_criterion, register_op_rule, Criterion, trace)
from edgeslim.compress.verify import randomize_
from edgeslim.models import build_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_keep(graph, ratio=0.5, seed=0):
    """Keep a random subset of every prunable group (an adversarial plan for the proof)."""
    gen = torch.Generator().manual_seed(seed)
    return {g.id: torch.randperm(g.size, generator=gen)[: max(1, int(g.size * ratio))].sort().values
            for g in graph.prunable_groups}


def assert_slim_equals_masked(model, x, ratio=0.5, seed=0):
    model.eval()
    graph = trace(model, x)
    plan = make_plan(graph, random_keep(graph, ratio, seed))
    slim = apply_plan(model, plan)
    assert equivalence_error(model, slim, plan, x) < 1e-5
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    return graph, plan, slim


class SEConcatNet(nn.Module):
    """Residual add, SE multiply, concat, chunk, flatten -> linear, depthwise and grouped convs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.se1, self.se2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.branch = nn.Conv2d(16, 8, 1)
        self.mix = nn.Conv2d(24, 32, 1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(4, 32)
        self.head = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = self.pw(self.dw(x))
        y = y * torch.sigmoid(self.se2(F.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        x = x + y
        z = torch.cat([x, self.branch(x)], 1)
        z = self.gn(self.grouped(self.mix(z)))
        a, b = z.chunk(2, dim=1)
        z = F.adaptive_avg_pool2d(a * b, 4)
        return self.head(torch.flatten(z, 1))


def test_groups_of_a_hand_made_net_and_their_proof():
    model = randomize_(SEConcatNet())
    x = torch.randn(2, 3, 8, 8)
    graph, plan, slim = assert_slim_equals_masked(model, x)
    ids = {g.id: g for g in graph.groups}
    # stem, depthwise and pointwise + SE expansion are coupled by the residual add and the SE multiply
    stream = ids["stem"]
    assert {"stem", "dw", "pw", "se2"} <= set(stream.producer_modules())
    assert "se1" in stream.consumer_modules() and "branch" in stream.consumer_modules()
    assert stream.size == 16 and ids["se1"].size == 4 and ids["branch"].size == 8
    # concatenation: the mixing conv reads the stream at positions 0-15 and the branch at 16-23
    assert torch.equal(next(s for s in stream.consumers if s.module == "mix").index, torch.arange(16))
    assert torch.equal(next(s for s in ids["branch"].consumers if s.module == "mix").index, torch.arange(16, 24))
    # grouped conv + GroupNorm blocks of 8, and chunk(2) pairs block k with block k + 2: two channels of 16
    assert ids["mix"].size == 2 and ids["mix"].producers[0].index.shape == (2, 16)
    # the linear layer reads channel c of the flattened 12x4x4 tensor at 16 positions
    head_reads = [s for g in graph.groups for s in g.consumers if s.module == "head"]
    assert head_reads and all(s.index.shape[1] == 8 * 16 for s in head_reads)
    assert ids["head"].prunable is False and ids["head"].reason == "model output"
    # the input channels of the stem are never a group
    assert not any(s.module == "stem" and s.dim == 1 for g in graph.groups for s in g.producers + g.consumers)
    # the grouped conv and GroupNorm are pruned by whole groups: `groups` shrinks, group width stays
    assert slim.grouped.groups == 2 and slim.grouped.in_channels // slim.grouped.groups == 8
    assert slim.gn.num_groups == slim.grouped.groups
    assert slim.dw.groups == slim.dw.in_channels == slim.dw.out_channels


def test_input_model_untouched_and_plan_is_json(tmp_path):
    model = randomize_(build_model("zoo:resnet20"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 32, 32)
    result = edgeslim.prune(model, x, target={"macs": 0.5})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.conv1.out_channels == 16
    path = result.plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(path)
    assert json.loads(path.read_text())["format"] == "edgeslim-plan/1"
    assert json.loads(path.read_text())["edgeslim"] == edgeslim.__version__
    # a fresh model + the saved plan + the slim state_dict reproduce the slim model exactly
    rebuilt = apply_plan(build_model("zoo:resnet20"), loaded)
    rebuilt.load_state_dict(result.model.state_dict())
    rebuilt.eval(), result.model.eval()
    assert torch.equal(rebuilt(x), result.model(x))


def test_checkpoint_of_a_slim_model_loads_with_weights_only(tmp_path):
    from edgeslim.models import load_model, save_checkpoint

    model = randomize_(build_model("zoo:resnet20"))
    x = torch.randn(1, 3, 32, 32)
    result = edgeslim.prune(model, x, target={"params": 0.5})
    path = save_checkpoint(tmp_path / "slim.pt", result.model, "zoo:resnet20", {}, (1, 3, 32, 32),
                           plan=result.plan.to_dict())
    loaded = load_model(str(path)).model.eval()
    assert torch.equal(loaded(x), result.model.eval()(x))


def test_resnet56_padded_shortcut_channels_are_prunable():
    model = randomize_(build_model("zoo:resnet56"))
    x = torch.randn(1, 3, 32, 32)
    graph, plan, slim = assert_slim_equals_masked(model, x, ratio=0.5, seed=3)
    # the zero channels the option-A shortcut pads with form groups of their own (8 + 8, 16 + 16)
    pads = [g for g in graph.prunable_groups if g.id in ("layer2.0.conv2", "layer3.0.conv2")]
    assert sorted(g.size for g in pads) == [16, 32]
    shortcut = slim.layer2[0].shortcut
    assert shortcut.pad_front + slim.layer1[0].conv2.out_channels + shortcut.pad_back == slim.layer2[0].conv2.out_channels
    assert shortcut.pad_front < 8 or shortcut.pad_back < 8


def test_masked_model_zeroes_reads_not_producers():
    model = randomize_(build_model("zoo:resnet20"))
    graph = trace(model, torch.randn(1, 3, 32, 32))
    keep = {"layer1.0.conv1": torch.arange(8)}
    plan = make_plan(graph, keep)
    masked = masked_equivalent(model, plan)
    assert masked.layer1[0].conv2.weight[:, 8:].abs().sum() == 0           # reads of removed channels
    assert masked.layer1[0].conv2.weight[:, :8].abs().sum() > 0
    assert torch.equal(masked.layer1[0].conv1.weight, model.layer1[0].conv1.weight)  # producer untouched
    assert torch.equal(masked.layer1[0].bn1.bias, model.layer1[0].bn1.bias)


@pytest.mark.parametrize("kind, value", [("channels", 0.5), ("macs", 0.5), ("params", 0.4), ("macs", 0.3)])
def test_targets_are_met_within_two_percent(kind, value):
    model = randomize_(build_model("zoo:resnet32"))
    result = edgeslim.prune(model, torch.randn(1, 3, 32, 32), target={kind: value})
    assert value * 0.98 <= result.achieved[kind] <= value + 1e-9
    assert set(result.achieved) == {"channels", "macs", "params"}
    assert result.equivalence_error < 1e-4
    # achieved MACs/params are counted on the slim model by edgeslim.count
    assert result.slim["macs"] == edgeslim.count(result.model, torch.randn(1, 3, 32, 32)).macs


def test_round_to_keeps_multiples():
    model = randomize_(build_model("zoo:resnet20"))
    result = edgeslim.prune(model, torch.randn(1, 3, 32, 32), target="macs=0.5", round_to=8)
    for g in result.plan.groups:
        assert len(g["keep"]) % 8 == 0 or len(g["keep"]) == g["size"]
    calls = []

    def to_even(group, n):
        calls.append(group.id)
        return n + n % 2

    result = edgeslim.prune(model, torch.randn(1, 3, 32, 32), target="channels=0.6", round_to=to_even)
    assert calls and all(len(g["keep"]) % 2 == 0 for g in result.plan.groups)


def test_impossible_target_names_the_closest_value():
    model = build_model("zoo:resnet20")
    with pytest.raises(ValueError, match=r"closest reachable is macs=0\.\d+"):
        edgeslim.prune(model, torch.randn(1, 3, 32, 32), target={"macs": 0.01})


def test_latency_and_device_rounding_seams_are_clear():
    model = build_model("zoo:resnet20")
    with pytest.raises(NotImplementedError, match="latency"):  # measured on this CPU only (test_latency_target.py)
        edgeslim.prune(model, torch.randn(1, 3, 32, 32), target="latency=3ms", device="rtx-3090")
    with pytest.raises(ValueError, match="device"):
        edgeslim.prune(model, torch.randn(1, 3, 32, 32), round_to="device")
    with pytest.raises(ValueError, match="unknown target"):
        edgeslim.prune(model, torch.randn(1, 3, 32, 32), target="flops=0.5")


class Weird(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.odd = Odd()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.odd(self.conv(x)).mean((2, 3)))


class Odd(nn.Module):
    def forward(self, x):
        return torch.fft.fft(x, dim=1).real  # mixes channels; the engine has no rule for it


def test_unknown_op_is_refused_by_name_and_can_be_ignored():
    model = Weird()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(UnsupportedOpError) as info:
        trace(model, x)
    message = str(info.value)
    assert "aten.fft_fft" in message and "'odd'" in message and "ignore=" in message and "register_op_rule" in message
    graph = trace(model, x, ignore=["odd"])
    assert graph.group("conv").prunable is False and "ignored" in graph.group("conv").reason
    report = trace(model, x, strict=False)
    assert report.unsupported_ops and report.unsupported_ops[0]["module"] == "odd"


def test_register_op_rule_extends_coverage():
    from edgeslim.compress.rules import OP_RULES

    class Act(nn.Module):
        def forward(self, x):
            return torch.special.i0(x)  # elementwise, but the engine has no rule for it

    model = nn.Sequential(nn.Conv2d(3, 8, 3), Act(), nn.Conv2d(8, 4, 3))
    with pytest.raises(UnsupportedOpError, match="aten.special_i0"):
        trace(model, torch.randn(1, 3, 8, 8))
    register_op_rule("aten.special_i0", "elementwise")
    try:
        graph = trace(model, torch.randn(1, 3, 8, 8))
    finally:
        del OP_RULES["aten.special_i0"]
    assert graph.group("0").prunable and graph.coverage_summary()["aten.special_i0"]["category"] == "elementwise"


def test_layer_norm_over_channels_is_fixed_with_a_reason():
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    graph = trace(model, torch.randn(2, 8))
    assert not graph.group("0").prunable and "LayerNorm" in graph.group("0").reason
    assert graph.group("2").prunable and graph.group("2").size == 32


def test_pixel_shuffle_and_channel_shuffle():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3, padding=1)
            self.shuffle = nn.ChannelShuffle(2)
            self.b = nn.Conv2d(16, 16, 3, padding=1)
            self.c = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.c(F.pixel_shuffle(self.b(self.shuffle(self.a(x))), 2))

    model = randomize_(Net()).eval()
    graph, plan, slim = assert_slim_equals_masked(model, torch.randn(1, 3, 8, 8), seed=1)
    assert graph.group("a").size == 8       # positions i and 8 + i of the shuffle go together
    assert graph.group("b").size == 4       # each pixel-shuffle output channel takes 4 input channels


def test_transformer_heads_and_mlp_are_prunable():
    from torchvision.models.vision_transformer import VisionTransformer

    model = randomize_(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32,
                                         mlp_dim=64, num_classes=5))
    x = torch.randn(1, 3, 32, 32)
    graph, plan, slim = assert_slim_equals_masked(model, x)
    heads = graph.group("encoder.layers.encoder_layer_0.self_attention")
    assert heads.prunable and heads.size == 4
    assert graph.group("encoder.layers.encoder_layer_0.mlp.0").size == 64
    attention = slim.encoder.layers[0].self_attention
    assert attention.num_heads == 2 and attention.head_dim == 8
    assert not graph.group("conv_proj").prunable  # the residual stream is normalised by LayerNorm


def test_criteria_and_custom_criterion():
    model = randomize_(build_model("zoo:resnet20"))
    x = torch.randn(1, 3, 32, 32)
    graph = trace(model, x)
    from edgeslim.compress import get_criterion

    for name in ("l1", "l2", "random", "bn_scale"):
        scores = get_criterion(name).score(model, graph)
        assert set(scores) == {g.id for g in graph.prunable_groups}
        assert all(scores[g.id].shape == (g.size,) and (scores[g.id] >= 0).all() for g in graph.prunable_groups)
    l1 = get_criterion("l1").score(model, graph)["layer1.0.conv1"]
    assert torch.allclose(l1, model.layer1[0].conv1.weight.abs().sum((1, 2, 3)))
    bn = get_criterion("bn_scale").score(model, graph)["layer1.0.conv1"]
    assert torch.allclose(bn, model.layer1[0].bn1.weight.abs().detach())

    @register_criterion("keep_first_half")
    class KeepFirst(Criterion):
        def score(self, model, graph, data=None, **options):
            return {g.id: torch.linspace(1, 0, g.size) for g in graph.prunable_groups}

    result = edgeslim.prune(model, x, method="keep_first_half", target={"channels": 0.5})
    kept = result.plan.kept("layer1.0.conv1")
    assert kept == sorted(kept) and kept[0] == 0


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ValueError, match="l1"):
        edgeslim.prune(build_model("zoo:resnet20"), torch.randn(1, 3, 32, 32), method="nope")


class LeNet(nn.Module):
    """A classic: the flatten size is a Python constant, so conv2's channels cannot change."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.view(-1, 16 * 5 * 5))))


def test_a_cut_that_fails_the_proof_is_found_and_kept_whole():
    model = randomize_(LeNet())
    x = torch.randn(1, 3, 32, 32)
    result = edgeslim.prune(model, x, target={"channels": 0.6})
    assert result.equivalence_error < 1e-4
    assert result.graph.group("conv2").prunable is False
    assert "equivalence check" in result.graph.group("conv2").reason
    assert result.model.conv2.out_channels == 16 and result.model.fc1.out_features < 120
    assert any("conv2" in note for note in result.notes)
    assert result.model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_concatenating_a_tensor_with_itself_and_with_another_source():
    # Torch-Pruning issues #146 (cat([x, x]) got the wrong input channels) and #481 (two sources merged)
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
            self.c = nn.Conv2d(16, 8, 3, padding=1)

        def forward(self, x):
            a = self.a(x)
            return self.c(torch.cat([a, a, self.b(x)], 1))

    model = randomize_(Net())
    graph, plan, slim = assert_slim_equals_masked(model, torch.randn(1, 3, 8, 8))
    a, b = graph.group("a"), graph.group("b")
    assert (a.size, b.size) == (6, 4)
    reads_a = next(s for s in a.consumers if s.module == "c")
    assert torch.equal(reads_a.index, torch.stack([torch.arange(6), torch.arange(6, 12)], 1))
    assert torch.equal(next(s for s in b.consumers if s.module == "c").index, torch.arange(12, 16))
    assert slim.c.in_channels == 2 * slim.a.out_channels + slim.b.out_channels


def test_ignore_accepts_paths_instances_and_types():
    model = build_model("zoo:resnet20")
    x = torch.randn(1, 3, 32, 32)
    for ignore in (["layer3.2.conv1"], [model.layer3[2].conv1], [nn.Linear]):
        graph = trace(model, x, ignore=ignore)
        assert not all(g.prunable for g in graph.groups if g.id != "fc")
    with pytest.raises(ValueError, match="no module"):
        trace(model, x, ignore=["layer9"])


def test_a_registered_cost_model_drives_the_solver():
    from edgeslim.compress.targets import COST_MODELS

    @edgeslim.compress.register_cost_model("conv_weights")
    def conv_weights(graph, cost_model, context):
        dense = sum(s[0] * s[1] for n, s in graph.param_shapes.items() if n.endswith("conv1.weight"))

        def cost(kept, counts):
            shapes = {**graph.param_shapes, **cost_model.kept_shapes(kept)}
            return sum(s[0] * s[1] for n, s in shapes.items() if n.endswith("conv1.weight")) / dense
        return cost

    try:
        result = edgeslim.prune(build_model("zoo:resnet20"), torch.randn(1, 3, 32, 32), target={"conv_weights": 0.5})
    finally:
        del COST_MODELS["conv_weights"]
    slim = result.model
    kept = sum(m.weight.shape[0] * m.weight.shape[1] for n, m in slim.named_modules() if n.endswith("conv1"))
    dense = sum(m.weight.shape[0] * m.weight.shape[1] for n, m in build_model("zoo:resnet20").named_modules()
                if n.endswith("conv1"))
    assert 0.49 <= kept / dense <= 0.5


@pytest.mark.parametrize("batch_first", [False, True])
def test_slim_attention_matches_torch_attention(batch_first):
    from edgeslim.compress import SlimMultiheadAttention

    torch.manual_seed(0)
    ref = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    slim = SlimMultiheadAttention(16, 4, 4, batch_first=batch_first).eval()
    slim.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    mask = torch.rand(5, 5) > 0.7
    mask.fill_diagonal_(False)
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, -1] = True
    with torch.no_grad():
        for kwargs in ({"need_weights": False}, {"need_weights": True}, {"attn_mask": mask},
                       {"key_padding_mask": padding, "need_weights": False}):
            a, wa = ref(x, x, x, **kwargs)
            b, wb = slim(x, x, x, **kwargs)
            assert torch.allclose(a, b, atol=1e-5)
            assert (wa is None) == (wb is None) and (wa is None or torch.allclose(wa, wb, atol=1e-5))


def test_activation_sites_point_at_the_group_channels():
    from edgeslim.compress import activation_sites

    model = randomize_(build_model("zoo:resnet20")).eval()
    x = torch.randn(2, 3, 32, 32)
    graph = trace(model, x)
    group = graph.group("layer2.0.conv2")  # the zero channels PadShortcut adds, plus conv2's matching filters
    sites = dict(activation_sites(model, group))
    assert {"layer2.0.conv2", "layer2.0.bn2", "layer2.1.conv2"} <= set(sites)
    outputs = {}
    hooks = [model.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: outputs.__setitem__(p, o)) for p in sites]
    model(x)
    for h in hooks:
        h.remove()
    bn2 = outputs["layer2.0.bn2"][:, sites["layer2.0.bn2"]]
    assert bn2.shape == (2, group.size, 16, 16)
    assert torch.equal(sites["layer2.0.bn2"], torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 24, 25, 26, 27, 28, 29, 30, 31]))


class C2fLike(nn.Module):
    """YOLOv8-style block: chunk the output of a conv in two, grow a list, concatenate, plus a decoder
    path with upsampling, transposed and 1-D convolutions."""

    def __init__(self):
        super().__init__()
        self.cv1 = nn.Conv2d(3, 16, 1)
        self.m = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.cv2 = nn.Conv2d(24, 12, 1)
        self.up = nn.ConvTranspose2d(12, 6, 2, stride=2)
        self.up_grouped = nn.ConvTranspose2d(6, 6, 2, stride=2, groups=3)
        self.line = nn.Conv1d(6, 4, 3)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.append(self.m(y[-1]))
        z = self.cv2(torch.cat(y, 1))
        z = F.interpolate(z, scale_factor=2.0) + torch.zeros_like(F.interpolate(z, scale_factor=2.0))
        z = self.up_grouped(F.silu(self.up(z[:, :, ::2, ::2])))
        return self.line(z.flatten(2)).mean(-1)


def test_chunked_block_and_decoder_layers():
    model = randomize_(C2fLike())
    graph, plan, slim = assert_slim_equals_masked(model, torch.randn(1, 3, 8, 8), seed=2)
    assert graph.group("cv1").size == 8          # chunk(2): channel i and 8 + i go together
    assert graph.group("up").size == 3           # grouped transposed conv: pruned by whole groups of 2
    assert slim.up_grouped.groups < 3 and slim.line.in_channels == slim.up_grouped.out_channels
