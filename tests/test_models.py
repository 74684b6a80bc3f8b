import pytest
import torch

from edgeslim.models import build_model, load_model, save_checkpoint


@pytest.mark.parametrize("name, params", [
    ("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet56", 0.85e6), ("resnet110", 1.73e6),
    ("mcifarnet", 1.296e6), ("vgg16", 15.0e6),
])
def test_zoo_parameter_counts(name, params):
    model = build_model(f"zoo:{name}")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.01)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet56_uses_parameter_free_option_a_shortcuts():
    model = build_model("zoo:resnet56")
    shortcut = model.layer2[0].shortcut
    assert sum(p.numel() for p in shortcut.parameters()) == 0
    out = shortcut(torch.randn(1, 16, 32, 32))
    assert out.shape == (1, 32, 16, 16)
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_mcifarnet_width_gives_scp_baselines():
    # SCP at d = 0.5 (ceil of half of every width): about 0.33 M parameters (specs/seed-raju.md A.5)
    model = build_model("zoo:mcifarnet", width=0.5)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(0.33e6, rel=0.03)


def test_checkpoint_roundtrip_loads_with_weights_only(tmp_path):
    model = build_model("zoo:resnet20", num_classes=7)
    path = save_checkpoint(tmp_path / "m.pt", model, "zoo:resnet20", {"num_classes": 7}, (1, 3, 32, 32))
    raw = torch.load(path, weights_only=True)  # no pickled modules inside
    assert raw["spec"] == "zoo:resnet20"
    loaded = load_model(str(path))
    x = torch.randn(1, 3, 32, 32)
    model.eval(), loaded.model.eval()
    assert torch.equal(model(x), loaded.model(x))
    assert loaded.input_shape == (1, 3, 32, 32)


def test_user_file_builder(tmp_path):
    f = tmp_path / "net.py"
    f.write_text("import torch.nn as nn\ndef build(num_classes=3):\n    return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))\n")
    model = build_model(f"{f}:build")
    assert model(torch.randn(1, 3, 2, 2)).shape == (1, 3)


def test_bad_spelling_is_a_clear_error():
    with pytest.raises(ValueError, match="zoo:NAME"):
        build_model("resnet56")
    with pytest.raises(ValueError, match="the zoo has"):
        build_model("zoo:resnet57")
