"""``method="lda"`` through the slimming engine, on a residual and a concatenating net, and the
iterative family driver (thesis schedule) with composed plans that rebuild every member."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import Subset, TensorDataset

import edgeslim
from edgeslim.compress import trace
from edgeslim.compress.criteria import get_criterion
from edgeslim.compress.lda_family import lda_family
from edgeslim.models import build_model, load_model
from edgeslim.training import TrainConfig, fit


@pytest.fixture(scope="module")
def trained_resnet(digits):
    """ResNet-20 trained briefly on 16x16 digits (fast; the data hold 8x8 pixels of information)."""
    from edgeslim.data import load_data

    data = load_data("digits", image_size=16)
    torch.manual_seed(0)
    model = build_model("zoo:resnet20")
    fit(model, data.train, None, TrainConfig(epochs=2, batch_size=64, lr=0.05), progress=False)
    return model.eval(), data


def test_lda_scores_every_group_on_the_eta_scale(trained_resnet):
    model, data = trained_resnet
    calib = Subset(data.train_plain, range(0, 1437, 4))
    graph = trace(model, torch.randn(1, 3, 16, 16))
    crit = get_criterion("lda")
    scores = crit.score(model, graph, calib, selection="fixed", m_prime=5)
    assert set(scores) == {g.id for g in graph.prunable_groups}
    assert all(s.shape == (graph.group(g).size,) and (s >= 0).all() and s.max() > 0 for g, s in scores.items())
    # eq. 3.13 scaling: in every group the non-zero scores have unit sample std
    for s in scores.values():
        nz = s[s > 0]
        if len(nz) > 1:
            assert float(nz.std()) == pytest.approx(1.0, rel=1e-4)
    sel = crit.last.selection
    assert len(sel.selected) == 5 and crit.last.decision == "fc"
    with pytest.raises(ValueError, match="unknown lda option"):
        crit.score(model, graph, calib, eta=0.3)
    with pytest.raises(ValueError, match="calibration data"):
        crit.score(model, graph, None)


def test_prune_with_lda_reaches_the_target_on_resnet_and_googlenet(trained_resnet, digits):
    model, data = trained_resnet
    calib = Subset(data.train_plain, range(0, 1437, 4))
    r = edgeslim.prune(model, torch.randn(1, 3, 16, 16), method="lda", target={"macs": 0.5}, data=calib,
                       progress=False)
    assert 0.48 <= r.achieved["macs"] <= 0.5 and r.equivalence_error < 1e-4   # the engine proved the cut
    assert sum(p.numel() for p in r.model.parameters()) < sum(p.numel() for p in model.parameters())

    googlenet = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
    images = F.interpolate(torch.stack([digits.test[i][0] for i in range(40)]), size=64)
    labels = torch.stack([digits.test[i][1] for i in range(40)])
    r = edgeslim.prune(googlenet, torch.randn(1, 3, 64, 64), method="lda", target={"macs": 0.5},
                       data=TensorDataset(images, labels), progress=False,
                       criterion_options={"selection": "fixed", "m_prime": 64})
    assert 0.48 <= r.achieved["macs"] <= 0.5 and r.equivalence_error < 1e-4
    branches = {g.id.split(".")[1] for g in r.graph.groups if g.id.startswith("inception4c.")}
    assert branches == {"branch1", "branch2", "branch3", "branch4"}     # concat: one group per branch conv


def test_family_follows_the_eta_schedule_and_members_rebuild_from_their_plans(trained_resnet, tmp_path):
    model, data = trained_resnet
    calib = Subset(data.train_plain, range(0, 1437, 6))
    example = torch.randn(1, 3, 16, 16)
    dense_out = model(example)
    result = lda_family(model, example, Subset(data.train, range(256)), Subset(data.test, range(120)), calib,
                        etas=[0.3, 0.6], finetune=TrainConfig(epochs=1, batch_size=64, lr=0.01),
                        criterion_options={"selection": "fixed", "m_prime": 9}, spec="zoo:resnet20",
                        spec_kwargs={"num_classes": 10}, out_dir=tmp_path, latency_runs=5, progress=False)
    assert torch.equal(model(example), dense_out)                        # the input model is untouched
    assert [m.eta for m in result.members] == [0.3, 0.6]
    macs = [result.dense["macs"]] + [m.macs for m in result.members]
    assert macs[0] > macs[1] > macs[2]                                   # eta raised -> smaller each step
    assert all(m.latency_ratio > 0 and 0 <= m.accuracy <= 100 for m in result.members)
    last = result.members[-1]
    loaded = load_model(last.checkpoint)                                 # spec + composed plan + weights
    assert edgeslim.count(loaded.model, example).macs == last.macs


def test_cli_lda_family_writes_one_checkpoint_per_step(tmp_path):
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "edgeslim", "lda-family", "zoo:resnet20", "--data", "digits",
                           "--input", "1x3x16x16", "--etas", "0.5", "--finetune-epochs", "0", "--selection", "otsu",
                           "--trace-per-class", "5", "--latency-runs", "5", "-o", str(tmp_path), "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert [m["eta"] for m in r["members"]] == [0.5] and r["members"][0]["macs"] < r["dense"]["macs"]
    assert (tmp_path / "step1.pt").is_file()
    bad = subprocess.run([sys.executable, "-m", "edgeslim", "lda-family", "zoo:resnet20", "--data", "digits",
                          "--push", "1,2", "-o", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "GAMMA,LAMBDA,BETA" in bad.stderr


@pytest.mark.slow  # traces all 1,437 training images (the CLI has no criterion options): ~1 min of CPU
def test_cli_prune_method_lda(tmp_path):
    import json
    import subprocess
    import sys

    cli = [sys.executable, "-m", "edgeslim", "prune", "zoo:resnet20", "--method", "lda", "-o", str(tmp_path)]
    proc = subprocess.run(cli + ["--target", "macs=0.5", "--data", "digits", "--input", "1x3x16x16", "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["method"] == "lda" and r["equivalence_error"] < 1e-4
    assert 0.48 <= r["slim"]["macs"] / r["dense"]["macs"] <= 0.5
    bad = subprocess.run(cli, capture_output=True, text=True, timeout=300)   # lda without calibration data
    assert bad.returncode == 2 and "--data" in bad.stderr and "Traceback" not in bad.stderr
