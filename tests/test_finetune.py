"""Recovery fine-tuning: resume, distillation, masks, recipes, the finetune command, torchrun DDP."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from edgeslim.cli import main
from edgeslim.cli.finetune import subsample
from edgeslim.compress.masks import apply_masks
from edgeslim.data import load_data
from edgeslim.models import build_model, load_checkpoint, save_checkpoint
from edgeslim.training import (Callback, Distillation, EpochCheckpoint, KeepMasks, LRSchedule, TrainConfig,
                               distillation_loss, evaluate, fit, state_dict_sha256)
from edgeslim.training.recipes import RECIPES, get_recipe

TESTS = Path(__file__).parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small(digits):
    return Subset(digits.train, range(160)), Subset(digits.test, range(61))


def tiny_resnet(seed=0):
    torch.manual_seed(seed)
    return build_model("zoo:resnet20", width=4)


class Interrupt(Callback):
    """Simulates a crash at the start of epoch ``at`` (None: never)."""

    class Stop(Exception):
        pass

    def __init__(self, at=None):
        self.at = at

    def on_epoch_start(self, state):
        if state.epoch == self.at:
            raise Interrupt.Stop


def test_resume_continues_exactly(small, tmp_path):
    train, test = small
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    straight = tiny_resnet()
    r_straight = fit(straight, train, test, cfg, [Interrupt()], progress=False)

    crashed = tiny_resnet()
    ckpt = EpochCheckpoint(tmp_path / "last.pt", "zoo:resnet20", {"width": 4}, (1, 3, 32, 32))
    with pytest.raises(Interrupt.Stop):
        fit(crashed, train, test, cfg, [Interrupt(at=2)], progress=False, checkpoint=ckpt)
    assert load_checkpoint(tmp_path / "last.pt").model is not None  # last.pt is also a plain model checkpoint

    resumed = tiny_resnet(seed=123)  # different weights: resume must load the saved ones
    r_resumed = fit(resumed, train, test, cfg, [Interrupt()], progress=False, checkpoint=ckpt, resume=tmp_path)
    assert state_dict_sha256(resumed) == state_dict_sha256(straight)
    assert [h["loss"] for h in r_resumed["history"]] == [h["loss"] for h in r_straight["history"]]
    assert r_resumed["samples_seen"] == r_straight["samples_seen"] == 3 * len(train)
    assert r_resumed["best_epoch"] == r_straight["best_epoch"] and r_resumed["last_epoch"] == 3

    with pytest.raises(ValueError, match="lr: saved 0.05, now 0.1"):
        fit(tiny_resnet(), train, test, TrainConfig(epochs=3, batch_size=32, lr=0.1), [Interrupt()],
            progress=False, resume=tmp_path / "last.pt")
    with pytest.raises(ValueError, match="callbacks"):
        fit(tiny_resnet(), train, test, cfg, [], progress=False, resume=tmp_path)
    with pytest.raises(FileNotFoundError, match="last.pt"):
        fit(tiny_resnet(), train, test, cfg, progress=False, resume=tmp_path / "nothing-here")


def test_distillation_loss_is_hinton_kd():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    p_t = F.softmax(t / 4, 1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / 4, 1))).sum(1).mean() * 16
    assert torch.allclose(distillation_loss(s, t, 4.0), expected, atol=1e-6)
    assert distillation_loss(t, t, 4.0).abs() < 1e-6


def test_distillation_mixes_soft_and_hard_loss(small):
    train, _ = small
    teacher = tiny_resnet(seed=1).eval()
    student = tiny_resnet(seed=2)
    seen = {}

    class Spy(Callback):  # records the loss terms of the first batch
        def extra_loss(self, state, x, y, logits):
            if not seen:
                seen["hard"] = state.criterion(logits, y).item()
                seen["ce"] = F.cross_entropy(logits, y).item()
                with torch.no_grad():
                    seen["kd"] = distillation_loss(logits, teacher(x), 2.0).item()

    kd = Distillation(teacher, temperature=2.0, alpha=0.75)
    fit(student, Subset(train, range(32)), None, TrainConfig(epochs=1, batch_size=32), [kd, Spy()], progress=False)
    assert seen["hard"] == pytest.approx(0.25 * seen["ce"], rel=1e-5)  # the hard-label share is (1 - alpha)
    assert seen["kd"] > 0
    assert next(teacher.parameters()).requires_grad  # the caller's teacher is not touched (a copy is used)
    with pytest.raises(ValueError, match="alpha"):
        Distillation(teacher, alpha=1.5)


def test_masks_stay_exactly_zero(small):
    train, _ = small
    torch.manual_seed(0)
    model = tiny_resnet()
    masks = {name: (torch.rand_like(p) > 0.5).float() for name, p in model.named_parameters()
             if name in ("layer1.0.conv1.weight", "fc.weight")}
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1, weight_decay=5e-3)
    masked = tiny_resnet()
    fit(masked, train, None, cfg, [KeepMasks(masks)], progress=False)
    free = tiny_resnet()
    fit(free, train, None, cfg, progress=False)
    for name, mask in masks.items():
        kept = dict(masked.named_parameters())[name]
        assert (kept[mask == 0] == 0).all() and (kept[mask == 1] != 0).all()
        assert (dict(free.named_parameters())[name][mask == 0] != 0).all()  # without the hook they move
    with pytest.raises(ValueError, match="no such parameter"):
        fit(tiny_resnet(), train, None, cfg, [KeepMasks({"nope.weight": torch.ones(1)})], progress=False)


def test_schedule_counts_epochs_not_steps():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(epochs=10, lr=1.0, schedule="step", milestones=(3, 6), gamma=0.1, warmup_epochs=1)
    sched = LRSchedule(torch.optim.SGD(model.parameters(), lr=cfg.lr), cfg)
    assert sched.factor(0.0, 0.25) == pytest.approx(0.25)      # warm-up, first of 4 steps
    assert sched.factor(2.99, 0.01) == 1.0
    assert sched.factor(3.0, 0.5) == pytest.approx(0.1)        # whatever the number of steps per epoch
    assert sched.factor(6.5, 0.001) == pytest.approx(0.01)
    cos = LRSchedule(torch.optim.SGD(model.parameters(), lr=1.0), TrainConfig(epochs=4, schedule="cosine"))
    assert cos.factor(0, 0.1) == 1.0 and cos.factor(2, 0.1) == pytest.approx(0.5) and cos.factor(4, 0.1) < 1e-12


def test_cpu_refuses_mixed_precision_with_a_note(small):
    train, _ = small
    r = fit(tiny_resnet(), Subset(train, range(32)), None, TrainConfig(epochs=1, batch_size=32, precision="bf16"),
            progress=False, device="cpu")
    assert r["precision"] == "fp32" and "CUDA only" in r["notes"][0]


def test_recipes_are_complete_and_overridable():
    for name, recipe in RECIPES.items():
        cfg = recipe.config()
        assert cfg.epochs > 0 and recipe.source, name
    snacs = get_recipe("snacs-cifar10-resnet56")
    assert (snacs.options["epochs"], snacs.options["milestones"], snacs.options["gamma"]) == (300, (90, 180, 260), 0.2)
    assert snacs.config(epochs=5, lr=None).epochs == 5 and snacs.config(epochs=5, lr=None).lr == 0.1
    assert get_recipe("fbs-cifar10-mcifarnet").config().optimizer == "rmsprop"
    assert any("publishes none" in note for note in get_recipe("tian-lda").notes)
    with pytest.raises(ValueError, match="mint-cifar10-vgg16"):
        get_recipe("mint-vgg")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A 'dense' teacher and a slimmer student checkpoint that records the teacher, as prune writes them."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    teacher = build_model("zoo:resnet20", width=8)
    save_checkpoint(folder / "dense.pt", teacher, "zoo:resnet20", {"width": 8}, (1, 3, 32, 32))
    student = build_model("zoo:resnet20", width=4)
    masks = {"layer2.0.conv1.weight": (torch.rand_like(student.layer2[0].conv1.weight) > 0.3).float()}
    save_checkpoint(folder / "slim.pt", student, "zoo:resnet20", {"width": 4}, (1, 3, 32, 32),
                    meta={"teacher": "dense.pt"}, masks=masks)
    return folder


def run_cli(capsys, *args):
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_finetune_command(checkpoints, tmp_path, capsys):
    common = ["finetune", str(checkpoints / "slim.pt"), "--data", "digits", "--train-samples", "96",
              "--test-samples", "50", "--batch-size", "32", "-o", str(tmp_path)]
    code, r = run_cli(capsys, *common, "--epochs", "2")
    assert code == 0, r
    for key in ("accuracy", "best_accuracy", "epochs", "world_size", "checkpoint", "training", "top5",
                "per_class_accuracy", "best_epoch", "last_epoch"):
        assert key in r
    assert r["distillation"]["enabled"] and r["distillation"]["teacher"].endswith("dense.pt")
    assert r["training"]["samples_seen"] == 2 * 96
    assert r["training"]["flops"] == 96 * 2 * (6 * r["training"]["forward_macs"] + 2 * r["training"]["teacher_forward_macs"])
    assert json.loads(Path(r["run_json"]).read_text())["last_epoch"] == 2
    loaded = load_checkpoint(r["checkpoint"])
    mask = loaded.masks["layer2.0.conv1.weight"]
    assert (loaded.model.layer2[0].conv1.weight[mask == 0] == 0).all()
    assert loaded.meta["teacher"].endswith("dense.pt") and loaded.meta["data"] == "digits"

    # the whole command again with --resume: the finished run is picked up, not retrained
    code, again = run_cli(capsys, *common, "--epochs", "2", "--resume")
    assert code == 0 and again["resumed_from"].endswith("last.pt") and again["accuracy"] == r["accuracy"]
    assert again["history"] == r["history"]

    code, plain = run_cli(capsys, *common[:-1], str(tmp_path / "plain"), "--epochs", "1", "--no-kd",
                          "--recipe", "digits")
    assert code == 0 and not plain["distillation"]["enabled"] and plain["config"]["lr"] == 0.02
    code, err = run_cli(capsys, *common, "--epochs", "3", "--resume")
    assert code == 2 and "epochs: saved 2, now 3" in err["error"]
    code, err = run_cli(capsys, *common, "--recipe", "nope")
    assert code == 2 and "digits" in err["error"]
    save_checkpoint(tmp_path / "five.pt", build_model("zoo:resnet20", num_classes=5, width=4), "zoo:resnet20",
                    {"width": 4, "num_classes": 5}, (1, 3, 32, 32))
    code, err = run_cli(capsys, "finetune", str(tmp_path / "five.pt"), "--data", "digits", "--epochs", "1",
                        "-o", str(tmp_path / "five"))
    assert code == 2 and "predicts 5 classes" in err["error"]


def _torchrun(args, cwd, env_extra, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TESTS / "ddp_probe.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# In the default run (about 30 s): the issue asks for a 2-process gloo test in CI. Rank 1 used to abort at exit in
# about one run in 40 ('terminate called without an active exception'): the gloo threads outlived
# destroy_process_group. The thread check below fails on every run while they do.
def test_ddp_two_gloo_processes(checkpoints, tmp_path):
    """torchrun, 2 CPU processes with gloo: identical weights, rank 0 alone writes, masks stay zero,
    sharded evaluation counts every test sample exactly once."""
    out = tmp_path / "run"
    proc = _torchrun(["finetune", str(checkpoints / "slim.pt"), "--data", "digits", "--epochs", "1",
                      "--train-samples", "128", "--test-samples", "61", "--batch-size", "32", "-o", str(out),
                      "--json"], cwd=tmp_path, env_extra={"PROBE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)  # exactly one JSON object: rank 1 prints nothing
    assert r["world_size"] == 2 and r["distillation"]["enabled"]
    hashes = r["rank_weight_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]

    for rank in (0, 1):  # the process group is really gone before the interpreter shuts down
        listing = tmp_path / f"threads-rank{rank}.txt"
        assert listing.exists(), proc.stderr[-3000:]  # the probe's exit hook failed: its traceback is there
        threads = listing.read_text().split()
        assert threads and not [t for t in threads if "gloo" in t], threads

    written = (tmp_path / "writes-rank0.txt").read_text().split()
    assert {Path(p).name for p in written} == {"last.pt.tmp", "model.pt.tmp"}
    assert not (tmp_path / "writes-rank1.txt").exists()

    loaded = load_checkpoint(out / "model.pt")
    assert state_dict_sha256(loaded.model) == hashes[0]  # what rank 0 saved is what rank 1 holds
    mask = loaded.masks["layer2.0.conv1.weight"]
    weight = loaded.model.layer2[0].conv1.weight
    assert (weight[mask == 0] == 0).all() and (weight[mask == 1] != 0).all()

    test = subsample(load_data("digits"), None, 61).test
    single = evaluate(loaded.model, test)
    assert single["samples"] == 61 and r["accuracy"] == pytest.approx(single["accuracy"])
    assert r["per_class_accuracy"] == pytest.approx(single["per_class_accuracy"])
    assert r["training"]["samples_seen"] == 128


def test_thesis_table_prints_ours_next_to_the_target():
    from edgeslim.report.thesis import compare_table, recipe_rows

    table = compare_table(recipe_rows(get_recipe("snacs-cifar10-resnet56"), {"top1": 92.0}))
    assert "| 92.00 | 93.38 | -1.38 |" in table
    assert "| not run | 68.59 |" in table  # parameters pruned was not measured: no number invented


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(small, precision):
    train, test = small
    r = fit(tiny_resnet(), train, test, TrainConfig(epochs=3, batch_size=32, precision=precision), progress=False,
            device="cuda")
    losses = [h["loss"] for h in r["history"]]
    assert r["precision"] == precision and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_ddp_interrupted_run_resumes_exactly(checkpoints, tmp_path):
    """Kill a 2-process torchrun run once its first epoch is saved; --resume must end where an
    uninterrupted run ends (per-rank RNG states and the optimiser are restored)."""
    import signal
    import time

    args = ["finetune", str(checkpoints / "slim.pt"), "--data", "digits", "--epochs", "3", "--train-samples", "128",
            "--test-samples", "40", "--batch-size", "32", "--json"]
    straight = _torchrun([*args, "-o", str(tmp_path / "straight")], tmp_path, {"PROBE_DIR": str(tmp_path)})
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TESTS / "ddp_probe.py"), *args, "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROBE_DIR": str(tmp_path)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole torchrun group, like a lost node
    proc.wait()
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["training"]
    assert saved["epoch"] < 3 and not (out / "model.pt").exists()  # it really was cut short
    resumed = _torchrun([*args, "-o", str(out), "--resume"], tmp_path, {"PROBE_DIR": str(tmp_path)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = json.loads(straight.stdout), json.loads(resumed.stdout)
    assert b["resumed_from"] and a["rank_weight_sha256"] == b["rank_weight_sha256"]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_masks_follow_channel_pruning():
    from edgeslim import prune
    from edgeslim.compress.masks import masks_after_plan

    torch.manual_seed(0)
    model = tiny_resnet().eval()
    masks = {name: (torch.rand_like(p) > 0.5).float() for name, p in model.named_parameters()
             if name in ("layer1.0.conv2.weight", "fc.weight")}
    result = prune(model, torch.randn(1, 3, 32, 32), target={"channels": 0.5}, progress=False)
    slim_masks = masks_after_plan(model, result.plan, masks)
    slim_params = dict(result.model.named_parameters())
    for name, mask in slim_masks.items():
        assert mask.shape == slim_params[name].shape and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert slim_masks["layer1.0.conv2.weight"].shape[1] < masks["layer1.0.conv2.weight"].shape[1]  # really cut
    # the masked weights of the dense model are exactly the masked weights left in the slim one
    masked_dense = copy.deepcopy(model)
    apply_masks(masked_dense, masks)
    from edgeslim.compress import apply_plan
    expected = dict(apply_plan(masked_dense, result.plan).named_parameters())
    for name, mask in slim_masks.items():
        assert torch.equal(slim_params[name] * mask, expected[name])


def test_prune_finetunes_with_the_dense_teacher(checkpoints, tmp_path, capsys):
    """prune --finetune-epochs distils from the dense model in memory, records it as the slim
    checkpoint's teacher (so `finetune` distils by default later), and resumes like finetune."""
    dense = checkpoints / "dense.pt"
    common = ["prune", str(dense), "--target", "macs=0.5", "--data", "digits", "--train-samples", "96",
              "--test-samples", "50", "--batch-size", "32", "-o", str(tmp_path / "p")]
    code, r = run_cli(capsys, *common, "--finetune-epochs", "1", "--kd-alpha", "0.7")
    assert code == 0, r
    kd = r["finetune"]["distillation"]
    assert kd["enabled"] and kd["alpha"] == 0.7 and kd["teacher"] == str(dense.resolve())
    assert r["finetune"]["training"]["samples_seen"] == 96 and r["finetune"]["last_epoch"] == 1
    assert r["slim"]["accuracy"] == json.loads(Path(r["finetune"]["run_json"]).read_text())["accuracy"]
    loaded = load_checkpoint(r["checkpoint"])
    assert sum(p.numel() for p in loaded.model.parameters()) == r["slim"]["params"]
    assert loaded.meta["teacher"] == str(dense.resolve()) and loaded.meta["method"] == "l1"
    assert loaded.plan == json.loads(Path(r["plan"]).read_text())

    code, again = run_cli(capsys, *common, "--finetune-epochs", "1", "--kd-alpha", "0.7", "--resume")
    assert code == 0 and again["finetune"]["resumed_from"] and again["slim"]["accuracy"] == r["slim"]["accuracy"]

    code, ft = run_cli(capsys, "finetune", r["checkpoint"], "--data", "digits", "--epochs", "1", "--train-samples",
                       "64", "--test-samples", "20", "--batch-size", "32", "-o", str(tmp_path / "ft"))
    assert code == 0 and ft["distillation"]["enabled"] and ft["distillation"]["teacher"] == str(dense.resolve())

    code, bare = run_cli(capsys, "prune", "zoo:resnet20", "--num-classes", "10", "--data", "digits",
                         "--train-samples", "32", "--test-samples", "20", "--batch-size", "32", "--finetune-epochs",
                         "1", "-o", str(tmp_path / "bare"))
    assert code == 0 and not bare["finetune"]["distillation"]["enabled"]
    assert "untrained" in bare["finetune"]["distillation"]["reason"]


@pytest.mark.slow
def test_prune_finetune_under_torchrun(checkpoints, tmp_path):
    """`prune --finetune-epochs` with 2 gloo processes: one plan, identical weights, rank 0 alone writes."""
    out = tmp_path / "run"
    proc = _torchrun(["prune", str(checkpoints / "dense.pt"), "--target", "macs=0.5", "--data", "digits",
                      "--finetune-epochs", "1", "--train-samples", "64", "--test-samples", "41", "--batch-size", "32",
                      "-o", str(out), "--json"], cwd=tmp_path, env_extra={"PROBE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["finetune"]["world_size"] == 2 and r["finetune"]["distillation"]["enabled"]
    hashes = r["finetune"]["rank_weight_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    written = {Path(p).name for p in (tmp_path / "writes-rank0.txt").read_text().split()}
    assert {"last.pt.tmp", "model.pt.tmp"} <= written and not (tmp_path / "writes-rank1.txt").exists()
    loaded = load_checkpoint(out / "model.pt")
    assert state_dict_sha256(loaded.model) == hashes[0]
    assert evaluate(loaded.model, subsample(load_data("digits"), None, 41).test)["accuracy"] == \
        pytest.approx(r["slim"]["accuracy"])
