"""The efficiency and robustness options of ``edgeslim train`` (the same options later serve finetune/prune)."""
import json

import pytest

from edgeslim.cli import main

BUILDERS = '''
from edgeslim.models import MCifarNet, VisionTransformer

def cnn(num_classes=10):
    return MCifarNet(num_classes, width=0.125)

def vit(num_classes=10):
    return VisionTransformer(num_classes, dim=32, depth=2, heads=2)
'''


@pytest.fixture(scope="module")
def builders(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.py"
    path.write_text(BUILDERS)
    return path


class Run:
    def __init__(self, returncode, stdout):
        self.returncode, self.stdout, self.stderr = returncode, stdout, ""


@pytest.fixture
def train(capsys):
    """``edgeslim train ... --data digits --json`` in this process (the CLI's own main)."""
    def run(*args):
        code = main(["train", *args, "--data", "digits", "--json"])
        return Run(code, capsys.readouterr().out)
    return run


def test_data_pruning_and_robustness_from_the_command_line(builders, tmp_path, train):
    proc = train(f"{builders}:cnn", "--epochs", "2", "-o", str(tmp_path), "--data-pruning", "ucb:0.5",
                 "--pruning-period", "1", "--eval-robustness", "--robustness-limit", "32",
                 "--robustness-source", f"{builders}:cnn")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    t = r["training"]
    assert t["samples_seen"] == 2 * 718 and t["samples_scored"] == 2 * 1437     # k = round(0.5 N); 2 rescorings
    assert t["data_pruning"] == {"method": "ucb", "rate": 0.5, "period": 1, "by_class": False, "checkpoints": 2}
    assert t["flops"] > 0 and "3 forward passes" in t["convention"]
    rob = r["robustness"]
    assert rob["samples"] == 32 and 0 <= rob["ece"] <= 1
    assert set(rob["accuracy_under"]) == {"gaussian", "poisson", "speckle", "fgsm", "pgd", "fgsm_transfer",
                                          "pgd_transfer"}


def test_lilac_adds_its_label_introduction_epochs_and_patchdrop_uses_a_saliency_model(builders, tmp_path, train):
    proc = train(f"{builders}:cnn", "--epochs", "1", "-o", str(tmp_path / "lilac"), "--curriculum", "lilac",
                 "--lilac-step", "5")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["epochs"] == 2 and r["training"]["lilac"]["il_epochs"] == 1
    teacher = json.loads(train(f"{builders}:vit", "--epochs", "1", "-o", str(tmp_path / "t")).stdout)["checkpoint"]
    proc = train(f"{builders}:vit", "--epochs", "1", "-o", str(tmp_path / "pd"), "--patchdrop", "nonsalient:0.5",
                 "--saliency-model", teacher)
    assert proc.returncode == 0, proc.stderr
    t = json.loads(proc.stdout)["training"]
    assert t["samples_scored"] == 1437 and t["train_macs_per_sample"] < 0.6 * t["score_macs_per_sample"]


def test_conflicting_or_malformed_options_are_one_clear_error(builders, tmp_path, train):
    proc = train(f"{builders}:cnn", "--epochs", "1", "-o", str(tmp_path), "--data-pruning", "ucb:0.5", "--caper")
    assert proc.returncode == 2 and "use one of them" in json.loads(proc.stdout)["error"]
    proc = train(f"{builders}:cnn", "--epochs", "1", "-o", str(tmp_path), "--patchdrop", "nonsalient:0.5")
    assert proc.returncode == 2 and "vision transformer" in json.loads(proc.stdout)["error"]


@pytest.mark.slow  # prunes, fine-tunes and attacks two models: ~25 s on a quiet machine
def test_prune_fine_tunes_with_data_pruning_and_reports_dense_vs_slim_robustness(builders, tmp_path, capsys):
    code = main(["prune", f"{builders}:cnn", "--target", "macs=0.5", "--data", "digits", "--finetune-epochs", "1",
                 "--data-pruning", "random:0.5", "--eval-robustness", "--robustness-limit", "16", "-o", str(tmp_path),
                 "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0, r
    assert r["training"]["samples_seen"] == 718 and r["training"]["samples_scored"] == 0  # random: no scoring
    rob = r["robustness"]
    for side in ("dense", "slim"):
        assert rob[side]["samples"] == 16 and "fgsm_transfer" in rob[side]["accuracy_under"]
    assert rob["slim_minus_dense"]["ece"] == rob["slim"]["ece"] - rob["dense"]["ece"]


def test_prune_refuses_training_options_without_fine_tuning(builders, tmp_path, capsys):
    code = main(["prune", f"{builders}:cnn", "--data", "digits", "--caper", "-o", str(tmp_path), "--json"])
    assert code == 2 and "--finetune-epochs" in json.loads(capsys.readouterr().out)["error"]
    code = main(["prune", f"{builders}:cnn", "--eval-robustness", "-o", str(tmp_path), "--json"])
    assert code == 2 and "--data" in json.loads(capsys.readouterr().out)["error"]
