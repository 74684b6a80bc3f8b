"""The engine on the torchvision classification zoo: every model is pruned to half its channels with
the L1 criterion and proven (slim == masked original), then run forward, backward and exported to
ONNX (checked in ONNX Runtime), or refused with a clear error.

The default run covers one model of each family at a small input size (the transformers and
ConvNeXt in small configurations of torchvision's own classes); ``-m slow`` runs all of
``torchvision.models.list_models(module=torchvision.models)`` (see also ``benchmarks/coverage.py``).
"""
import pytest
import torch
import torchvision
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.densenet import DenseNet
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

from edgeslim.compress.verify import check_slimming, randomize_


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = {
    "resnet18": lambda: torchvision.models.resnet18(),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(),
    "shufflenet_v2_x0_5": lambda: torchvision.models.shufflenet_v2_x0_5(),
    "regnet_x_400mf": lambda: torchvision.models.regnet_x_400mf(),
    "squeezenet1_0": lambda: torchvision.models.squeezenet1_0(),
    "mnasnet0_5": lambda: torchvision.models.mnasnet0_5(),
    "googlenet": lambda: torchvision.models.googlenet(init_weights=False),  # auxiliary heads run in training
    "densenet(small)": lambda: DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16),
    "convnext(small)": lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]),
    "vit(small)": lambda: VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32,
                                            mlp_dim=64),
    "swin(small)": lambda: SwinTransformer([4, 4], 16, [1, 1], [2, 4], [4, 4]),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_representative_models_prune_prove_train_and_export(name, tmp_path):
    model = randomize_(SMALL[name]()).eval()
    x = torch.randn(1, 3, 64 if name == "googlenet" else 32, 64 if name == "googlenet" else 32)
    result = check_slimming(model, x, workdir=tmp_path)
    assert result["status"] == "passed", result.get("reason")
    assert result["equivalence_error"] < 1e-4 and result["onnx_max_rel_diff"] < 1e-4
    assert result["slim_macs"] < result["dense_macs"]


def zoo_input(name: str) -> torch.Tensor:
    if name.startswith(("vit", "maxvit", "swin", "alexnet", "vgg")):
        return torch.randn(1, 3, 224, 224)
    side = 299 if name == "inception_v3" else 64  # Inception's auxiliary head (training only) needs 299
    return torch.randn(1, 3, side, side)


@pytest.mark.slow
@pytest.mark.parametrize("name", torchvision.models.list_models(module=torchvision.models))
def test_every_torchvision_classifier(name, tmp_path):
    model = randomize_(torchvision.models.get_model(name)).eval()
    result = check_slimming(model, zoo_input(name), workdir=tmp_path)
    assert result["status"] in ("passed", "refused"), result.get("reason")
    if result["status"] == "refused":
        assert "edgeslim" in result["reason"] or "cannot" in result["reason"]
