"""The efficiency and robustness options of ``edgeslim train``, ``finetune`` and ``prune`` (also under torchrun)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from edgeslim.cli import main
from edgeslim.models import build_model, save_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    assert t["flops"] > 0 and "3 forward passes" in t["flops_convention"]
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
    t = r["finetune"]["training"]
    assert t["samples_seen"] == 718 and t["samples_scored"] == 0  # random: no scoring
    rob = r["robustness"]
    for side in ("dense", "slim"):
        assert rob[side]["samples"] == 16 and "fgsm_transfer" in rob[side]["accuracy_under"]
    assert rob["slim_minus_dense"]["ece"] == rob["slim"]["ece"] - rob["dense"]["ece"]


def test_prune_refuses_training_options_without_fine_tuning(builders, tmp_path, capsys):
    code = main(["prune", f"{builders}:cnn", "--data", "digits", "--caper", "-o", str(tmp_path), "--json"])
    assert code == 2 and "--finetune-epochs" in json.loads(capsys.readouterr().out)["error"]
    code = main(["prune", f"{builders}:cnn", "--eval-robustness", "-o", str(tmp_path), "--json"])
    assert code == 2 and "--data" in json.loads(capsys.readouterr().out)["error"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A dense checkpoint and a narrower one that records it as its teacher (as prune writes them)."""
    folder = tmp_path_factory.mktemp("pair")
    torch.manual_seed(0)
    save_checkpoint(folder / "dense.pt", build_model("zoo:resnet20", width=8), "zoo:resnet20", {"width": 8},
                    (1, 3, 32, 32))
    save_checkpoint(folder / "slim.pt", build_model("zoo:resnet20", width=4), "zoo:resnet20", {"width": 4},
                    (1, 3, 32, 32), meta={"teacher": "dense.pt"})
    return folder


def test_finetune_takes_the_efficiency_options_and_compares_robustness_with_its_teacher(pair, tmp_path, capsys):
    code = main(["finetune", str(pair / "slim.pt"), "--data", "digits", "--train-samples", "96", "--test-samples",
                 "40", "--batch-size", "32", "--epochs", "2", "--caper", "6", "--caper-tau", "1",
                 "--eval-robustness", "--robustness-limit", "16", "-o", str(tmp_path), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0, r
    t = r["training"]
    assert t["caper"]["removed_count"] == 6 and t["samples_seen"] == 96 + 90     # removed for good at epoch 1
    assert t["samples_scored"] > 0 and t["teacher_forward_macs"] > t["forward_macs"]
    distilled = 2 * t["teacher_forward_macs"] * t["samples_seen"]                  # KD is on: the teacher is known
    assert t["flops"] == 2 * (3 * t["samples_seen"] + t["samples_scored"]) * t["forward_macs"] + distilled
    rob = r["robustness"]
    assert rob["dense"]["samples"] == rob["slim"]["samples"] == 16 and "pgd_transfer" in rob["slim"]["accuracy_under"]


def _torchrun(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "edgeslim",
           *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # two torchrun processes plus a reference run: ~30 s on a quiet machine (see test_finetune's DDP note)
def test_data_pruning_under_torchrun_selects_what_one_process_selects(pair, tmp_path):
    """Each rank scores every second sample; the gathered scores must give the single-process selection,
    the same on both ranks (identical weights at the end), with the DistributedSampler splitting it."""
    args = ["finetune", str(pair / "slim.pt"), "--data", "digits", "--train-samples", "101", "--test-samples", "40",
            "--batch-size", "32", "--epochs", "1", "--no-kd", "--data-pruning", "ucb:0.5", "--pruning-period", "1",
            "--json"]
    proc = _torchrun([*args, "-o", str(tmp_path / "ddp")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["world_size"] == 2 and len(set(r["rank_weight_sha256"])) == 1
    t = r["training"]
    assert t["samples_seen"] == 50 and t["samples_scored"] == 101 and t["data_pruning"]["checkpoints"] == 1
    assert main([*args, "-o", str(tmp_path / "one")]) == 0
    saved = [torch.load(tmp_path / run / "last.pt", weights_only=True)["training"]["callbacks"][0]["state"]
             for run in ("ddp", "one")]
    assert len(saved[0]["selected"]) == 50 and torch.equal(saved[0]["selected"], saved[1]["selected"])
    assert torch.allclose(saved[0]["ema"], saved[1]["ema"], atol=1e-5)
