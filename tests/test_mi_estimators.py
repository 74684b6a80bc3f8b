"""The MINT (MST conditional GMI) and SNACS (hash ACMI) estimators on synthetic data with known structure."""
import numpy as np
import pytest
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.stats import spearmanr

from edgeslim.compress.criteria.mi_estimators import (
    acmi, acmi_layer, dense_mst, friedman_rafsky, g_divergence, mst_cmi, mst_cmi_layer, nn_bootstrap, split_groups,
)


def gaussian_triple(kind: str, n: int = 900, dz: int = 2, strength: float = 1.0, seed: int = 0):
    """X, Y, Z with Z ~ N(0, I). dependent: X = strength * Y + f(Z) + noise (Y adds information beyond Z);
    conditionally independent: X and Y are noisy functions of Z only."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, dz))
    if kind == "dependent":
        y = 0.5 * z[:, :1] + rng.standard_normal((n, 1))
        x = strength * y + 0.5 * z[:, :1] + 0.3 * rng.standard_normal((n, 1))
    elif kind == "cond_indep":
        y = z[:, :1] + 0.4 * rng.standard_normal((n, 1))
        x = z[:, :1] + 0.4 * rng.standard_normal((n, 1))
    else:
        raise ValueError(kind)
    return x, y, z


def test_g_divergence():
    assert g_divergence(1.0) == 0.0
    t = np.linspace(0, 50, 101)
    assert np.all(g_divergence(t) >= 0)
    assert g_divergence(0.0) == pytest.approx(0.5)


@pytest.mark.parametrize("estimator", [acmi, mst_cmi], ids=["acmi", "mst"])
def test_dependent_scores_above_conditionally_independent(estimator):
    for seed in range(3):
        dep = estimator(*gaussian_triple("dependent", seed=seed), seed=seed)
        ci = estimator(*gaussian_triple("cond_indep", seed=seed), seed=seed)
        assert dep > ci + 0.05, (seed, dep, ci)


@pytest.mark.parametrize("estimator", [acmi, mst_cmi], ids=["acmi", "mst"])
def test_values_in_unit_interval_including_degenerate_inputs(estimator):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 1))
    cases = [
        (x, x, rng.standard_normal((300, 3))),          # X = Y
        (x, rng.standard_normal((300, 1)), None),        # independent, no Z
        (np.ones((300, 1)), x, rng.standard_normal((300, 2))),  # constant X
        (np.repeat(x[:30], 10, axis=0), np.repeat(x[:30], 10, axis=0), np.zeros((300, 4))),  # duplicates, constant Z
        (rng.standard_normal((300, 4)), rng.standard_normal((300, 8)), rng.standard_normal((300, 40))),
    ]
    for x_, y_, z_ in cases:
        v = estimator(x_, y_, z_)
        assert 0.0 <= v <= 1.0


@pytest.mark.parametrize("estimator", [acmi, mst_cmi], ids=["acmi", "mst"])
def test_reproducible_under_a_seed(estimator):
    x, y, z = gaussian_triple("dependent", n=600, dz=5)
    assert estimator(x, y, z, seed=3) == estimator(x, y, z, seed=3)
    values = {estimator(x, y, z, seed=s) for s in range(4)}
    assert len(values) > 1  # the seed really drives the random split / hash


def test_acmi_with_phi_one_follows_the_mst_gmi_in_trend():
    strengths = np.linspace(0.0, 2.0, 9)
    a = [acmi(*gaussian_triple("dependent", n=900, strength=s, seed=1), phi=1.0) for s in strengths]
    m = [mst_cmi(*gaussian_triple("dependent", n=900, strength=s, seed=1)) for s in strengths]
    assert spearmanr(a, m).statistic >= 0.8
    assert spearmanr(a, strengths).statistic >= 0.8


def test_phi_scales_the_estimate_and_hash_ensembles_average():
    x, y, z = gaussian_triple("dependent")
    assert acmi(x, y, z, phi=0.5) == pytest.approx(0.5 * acmi(x, y, z, phi=1.0))
    assert 0 < acmi(x, y, z, n_hashes=3) <= 1


def synthetic_layer(n=900, parents=6, children=6, seed=0):
    """Like a conv layer's spatial means: children are linear in non-negative (post-ReLU), correlated
    parents plus noise; half the kernels are exactly zero, the others have |w| in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((parents, parents)) * 0.3 + np.eye(parents)
    p = np.maximum(rng.standard_normal((n, parents)) @ mix, 0)
    w = rng.uniform(0.5, 1.5, (children, parents)) * rng.choice([-1, 1], (children, parents))
    w *= rng.random((children, parents)) < 0.5
    c = p @ w.T + 0.2 * rng.standard_normal((n, children))
    return c, p, w


@pytest.mark.parametrize("fn", [acmi_layer, mst_cmi_layer], ids=["acmi", "mst"])
def test_layer_scores_rank_real_connections_above_absent_ones(fn):
    aucs = []
    for seed in range(3):
        c, p, w = synthetic_layer(seed=seed)
        eta = fn(c, p)
        assert eta.shape == (6, 6) and np.all((eta >= 0) & (eta <= 1))
        present, absent = eta[w != 0], eta[w == 0]
        aucs.append((present[:, None] > absent[None, :]).mean())
    assert np.mean(aucs) > 0.75, aucs


def test_layer_groups_and_partial_scoring():
    c, p, _ = synthetic_layer(n=600, parents=12)
    eta = acmi_layer(c, p, split_groups(6, 3), split_groups(12, 4), parents_to_score=[1, 3])
    assert eta.shape == (3, 4)
    assert np.isnan(eta[:, [0, 2]]).all() and not np.isnan(eta[:, [1, 3]]).any()
    full = acmi_layer(c, p, split_groups(6, 3), split_groups(12, 4))
    np.testing.assert_array_equal(full[:, [1, 3]], eta[:, [1, 3]])  # a pair's score ignores which others are scored
    rho = mst_cmi_layer(c, p, split_groups(6, 2), split_groups(12, 3))
    assert rho.shape == (2, 3) and not np.isnan(rho).any()


def test_mst_layer_agrees_with_single_pair_calls():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((300, 5))
    c = p @ rng.standard_normal((5, 2)) + 0.3 * rng.standard_normal((300, 2))
    rho = mst_cmi_layer(c, p, seed=4)
    for j in range(5):
        others = np.delete(p, j, axis=1)
        # the shared distance decomposition may round differently: at most one MST edge apart (1/n)
        assert rho[1, j] == pytest.approx(mst_cmi(c[:, 1], p[:, j], others, seed=4), abs=1 / 100 + 1e-9)


def test_dense_mst_matches_scipy():
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((120, 3))
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    edges = dense_mst(d)
    assert len(edges) == 119
    assert d[edges[:, 0], edges[:, 1]].sum() == pytest.approx(minimum_spanning_tree(d).sum())
    # squared distances give the same tree
    assert d[tuple(dense_mst(d ** 2).T)].sum() == pytest.approx(d[edges[:, 0], edges[:, 1]].sum())


def test_friedman_rafsky_counts_cross_edges():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 2))
    b = rng.standard_normal((50, 2)) + 100.0  # far apart: a single edge joins the two sets
    pts = np.concatenate([a, b])
    d = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    assert friedman_rafsky(d, 50) == 1


def test_nn_bootstrap_takes_the_nearest_z():
    z3 = np.array([[0.0], [10.0], [20.0]])
    z2 = np.array([[19.0], [1.0], [11.0]])
    assert nn_bootstrap(z2, z3).tolist() == [2, 0, 1]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same samples"):
        acmi_layer(np.zeros((10, 2)), np.zeros((11, 2)))
    with pytest.raises(ValueError, match="groups"):
        split_groups(4, 5)
    with pytest.raises(ValueError, match="eps"):
        acmi(np.zeros(20), np.zeros(20), eps=0)


@pytest.mark.parametrize("spread", [50, 10**6])  # keys dense enough for bincount / sparse enough to sort
def test_nested_counts_match_separate_counts(spread):
    from edgeslim.compress.criteria.mi_estimators import _key_counts, _nested_key_counts

    rng = np.random.default_rng(0)
    outer = rng.integers(0, spread, size=(3, 400)) * 7 + rng.integers(0, 3, size=(3, 400))
    inner = rng.integers(0, 5, size=(1, 400))
    n_outer, n_pair = _nested_key_counts(outer, inner, 5)
    assert np.array_equal(n_outer, _key_counts(outer))
    assert np.array_equal(n_pair, _key_counts(outer * 5 + inner))
    assert n_pair.shape == outer.shape and (n_pair <= n_outer).all()
