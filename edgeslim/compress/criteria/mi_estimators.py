"""Conditional dependence estimators of the MINT and SNACS theses (specs/seed-ganesh.md §1.3, §2.3-2.4).

Both estimate I(X; Y | Z) between a *child* filter (group) X of layer l+1, a *parent* filter (group)
Y of layer l and the *other* parents Z of layer l, from N samples of spatially averaged activations.

* ``mst_cmi`` -- MINT's conditional geometric MI (thesis Alg. 2-3): split the samples in thirds,
  build a conditionally independent copy with the nearest-neighbour bootstrap on Z, join it with
  the original third, take the Euclidean minimal spanning tree and count the edges R_n that join
  the two sets (Friedman-Rafsky). I = 1 - R_n / n, clipped to [0, 1].
* ``acmi`` -- SNACS's hash-based adaptive conditional MI (Eq. 4.5-4.7): hash X, Y and Z with
  H = H2(H1(.)), H1 = floor((u + b) / eps) per coordinate, H2 a random map into F = c_H * N
  buckets, count collisions and sum phi * (r_ik r_jk / r_k) * g(r_ijk r_k / (r_ik r_jk)) over the
  occupied (x, y, z) cells, with g(t) = (t - 1)^2 / (2 (t + 1)). phi = 1 gives the conditional GMI.

The ``*_layer`` functions score every (child group, parent group) pair of one layer pair at once and
share the work between pairs honestly (identical numbers to calling the single-pair functions):

* ACMI hashes the full parent layer once. Z = "all parents but group p" is obtained by subtracting
  group p's share of the random projection (H1 acts on a random projection of Z, see below), so Z is
  never re-hashed from scratch for each p; collision counts are bincounts over dense labels.
* MST forms the squared-distance matrix of the full parent layer once and subtracts group p's part;
  the minimal spanning tree is a dense O(V^2) Prim on squared distances (the same tree as on
  distances), the NN bootstrap reuses the same decomposition.

Choices the thesis leaves open (spec §2.4, §6.14), all parameters:

* Every coordinate is standardised (zero mean, unit variance) first, so one bin width fits all.
* H1 on more than ``proj_dim`` coordinates hashes a Gaussian random projection to ``proj_dim``
  coordinates first (the "p-stable" locality-sensitive hash, the engineering default of the EDGE
  reference estimator the thesis builds on). Without it a 63-dimensional Z puts every sample in its
  own cell and every score collapses to 0.
* ``eps``: bin width in standard deviations for X and Y (default 0.5); the bin width of Z is chosen
  per layer pair so that a Z cell holds ``z_occupancy`` samples on average (default 10): the
  estimate is conditional on Z only if Z cells hold several samples.
* ``c_h`` = 16 (F = 16 N buckets: spurious H2 collisions are negligible), offsets b ~ U[0, eps) per
  coordinate, drawn from ``seed``.
* The sum runs over occupied cells only ("edges with non-zero ratios", Eq. 4.7), which keeps the
  estimate in [0, 1] for phi in [0, 1].
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "g_divergence", "standardize", "split_groups", "acmi", "acmi_layer", "mst_cmi", "mst_cmi_layer",
    "nn_bootstrap", "friedman_rafsky", "dense_mst",
]

Groups = Sequence[np.ndarray]

# Defaults of the hash estimator (free parameters of the thesis; see the module docstring).
DEFAULT_EPS = 0.5          # bin width of X and Y, in standard deviations
DEFAULT_Z_OCCUPANCY = 10   # mean number of samples per Z cell
DEFAULT_C_H = 16           # F = c_H * N buckets
DEFAULT_N_HASHES = 1       # independent hash draws averaged


def g_divergence(t: np.ndarray) -> np.ndarray:
    """g(t) = (t - 1)^2 / (2 (t + 1)), the convex function of the ACMI (Eq. 4.2); g(1) = 0."""
    t = np.asarray(t, dtype=np.float64)
    return (t - 1.0) ** 2 / (2.0 * (t + 1.0))


def standardize(a: np.ndarray) -> np.ndarray:
    """Columns to zero mean, unit variance (float64); constant columns become 0."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    std = a.std(axis=0)
    return (a - a.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)


def split_groups(n: int, groups: int | None) -> list[np.ndarray]:
    """``groups`` sequential, (near) equal groups of ``range(n)`` (thesis: consecutive filters).

    None: one group per filter."""
    groups = n if groups is None else int(groups)
    if not 1 <= groups <= n:
        raise ValueError(f"number of groups must be between 1 and the channel count {n}, got {groups}")
    return [np.asarray(g, dtype=np.int64) for g in np.array_split(np.arange(n), groups)]


def _as_2d(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be (samples,) or (samples, dims), got shape {a.shape}")
    return a


def _check_groups(groups: Groups, n: int, name: str) -> list[np.ndarray]:
    out = [np.asarray(g, dtype=np.int64).ravel() for g in groups]
    if not out or any(len(g) == 0 for g in out):
        raise ValueError(f"{name} must be a non-empty list of non-empty index arrays")
    if any(g.min() < 0 or g.max() >= n for g in out):
        raise ValueError(f"{name} index out of range for {n} channels")
    return out


def _layer_inputs(child, parent, child_groups: Groups | None, parent_groups: Groups | None, min_samples: int,
                  estimator: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The checked (child, parent, child groups, parent groups) of a layer-pair estimator; groups
    default to one per filter."""
    child, parent = _as_2d(child, "child"), _as_2d(parent, "parent")
    if len(parent) != len(child):
        raise ValueError(f"child and parent activations must have the same samples ({len(child)} vs {len(parent)})")
    if len(child) < min_samples:
        raise ValueError(f"{estimator} needs at least {min_samples} samples, got {len(child)}")
    cg = _check_groups(child_groups if child_groups is not None else split_groups(child.shape[1], None),
                       child.shape[1], "child_groups")
    pg = _check_groups(parent_groups if parent_groups is not None else split_groups(parent.shape[1], None),
                       parent.shape[1], "parent_groups")
    return child, parent, cg, pg


def _single_pair(x, y, z) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """I(X; Y | Z) as a layer pair: child X as one group, parents [Y, Z] with Y as group 0 (and Z as group 1)."""
    x, y = _as_2d(x, "x"), _as_2d(y, "y")
    z = np.zeros((len(x), 0)) if z is None else _as_2d(z, "z")
    parent = np.concatenate([y, z], axis=1)
    groups = [np.arange(y.shape[1])] + ([np.arange(y.shape[1], parent.shape[1])] if z.shape[1] else [])
    return x, parent, [np.arange(x.shape[1])], groups


# --------------------------------------------------------------------------------------------------
# Hash-based ACMI (SNACS)
# --------------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads a linear hash over all 64 bits before ``% F``."""
    h = h.copy()
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


class _Hash:
    """One draw of H = H2(H1(.)) for d-dimensional points: H1 = floor((u + b) / eps) per coordinate with
    offsets b ~ U[0, eps), H2 a random map of the integer codes into F = c_H * N buckets.

    H2 is a random linear map of the code vector (wrapping uint64 arithmetic, odd random coefficients)
    followed by a mixer and ``% F``. ``labels`` returns dense ids 0..K-1 of the buckets.
    """

    def __init__(self, d: int, eps: float, n_samples: int, c_h: int, rng: np.random.Generator):
        if c_h < 1:
            raise ValueError(f"c_H must be a positive integer, got {c_h}")
        self.eps = eps
        self.offsets = rng.uniform(0.0, eps, size=d)
        self.coeffs = rng.integers(1, 2**63 - 1, size=d, dtype=np.int64).astype(np.uint64) | np.uint64(1)
        self.buckets = np.uint64(c_h * n_samples)

    def labels(self, u: np.ndarray) -> np.ndarray:
        if u.shape[1] == 0:
            return np.zeros(len(u), dtype=np.int64)
        codes = np.floor((u + self.offsets) / self.eps).astype(np.int64)
        with np.errstate(over="ignore"):
            h = (codes.astype(np.uint64) * self.coeffs).sum(axis=1, dtype=np.uint64) + _GOLDEN
        return np.unique(_mix64(h) % self.buckets, return_inverse=True)[1].astype(np.int64).ravel()


def _projection(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian projection R^d -> R^k with unit-variance outputs for independent unit inputs."""
    return rng.standard_normal((d, k)) / math.sqrt(d)


def _auto_proj_dim(n_samples: int) -> int:
    # EDGE's rule: as many projected coordinates as the sample supports, log2(N / 10), at least 1.
    return max(1, int(math.floor(math.log2(max(n_samples, 20) / 10))))


def _cells(labels: np.ndarray) -> int:
    return int(labels.max()) + 1 if len(labels) else 0


def _eps_for_occupancy(u: np.ndarray, occupancy: float, rng_seed: int) -> float:
    """Bin width (in the units of ``u``) for which cells of floor-hashed ``u`` hold ``occupancy`` samples on average."""
    n = len(u)
    target = max(1.0, n / occupancy)
    lo, hi = 1e-3, 1e3
    for _ in range(40):  # bisection on log(eps); the cell count falls as eps grows
        mid = math.sqrt(lo * hi)
        cells = _cells(_Hash(u.shape[1], mid, n, 16, np.random.default_rng(rng_seed)).labels(u))
        if cells > target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.02:
            break
    return math.sqrt(lo * hi)


def _counts(labels: np.ndarray) -> np.ndarray:
    """For every sample, how many samples share its label."""
    return np.bincount(labels)[labels]


# Composite keys up to this many times the number of entries are counted with bincount, larger ones
# with a sort: a bincount allocates and zeroes ``top`` slots (about 1 ns each here), a sort costs
# about 50 ns per entry, so a sparse key space is cheaper to sort.
_BINCOUNT_SPARSITY = 48


def _key_counts(keys: np.ndarray) -> np.ndarray:
    """For every entry of ``keys`` (non-negative ints), how many entries share its value."""
    flat = keys.ravel()
    top = int(flat.max()) + 1 if flat.size else 0
    if top <= _BINCOUNT_SPARSITY * flat.size:
        return np.bincount(flat, minlength=top)[keys]
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    return counts[inverse].reshape(keys.shape)


def _nested_key_counts(outer: np.ndarray, inner: np.ndarray, k_inner: int) -> tuple[np.ndarray, np.ndarray]:
    """Per entry, how many entries share its ``outer`` key and how many its (outer, inner) pair.

    ``inner`` (values < ``k_inner``) broadcasts against ``outer``. One sort serves both counts: the
    sorted unique pairs list each outer key's pairs contiguously, so the outer counts are their sums.
    """
    keys = outer * k_inner + inner
    flat = keys.ravel()
    top = int(flat.max()) + 1 if flat.size else 0
    if top <= _BINCOUNT_SPARSITY * flat.size:  # dense key space: count by bincount (``top`` is known)
        return _key_counts(outer), np.bincount(flat, minlength=top)[keys]
    pairs, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    outer_of_pair = pairs // k_inner
    outer_id = np.cumsum(np.r_[True, outer_of_pair[1:] != outer_of_pair[:-1]]) - 1
    outer_counts = np.bincount(outer_id, weights=counts).astype(np.int64)
    inverse = inverse.reshape(keys.shape)
    return outer_counts[outer_id[inverse]], counts[inverse]


def _acmi_for_parent(x_labels: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Eq. 4.7 with phi = 1 for every child at once, given hashed labels.

    ``x_labels`` (G_child, N) dense labels of each child group, ``y`` and ``z`` (N,) dense labels of the
    parent group and of the other parents. Works per sample: a sample in an occupied (x, y, z) cell
    contributes 1 / N_ijk of that cell's term, so every cell is counted once.
    """
    g_child, n = x_labels.shape
    k_x, k_y, k_z = _cells(x_labels), _cells(y), _cells(z)
    n_z = _counts(z)
    yz = z * k_y + y
    n_yz = _key_counts(yz)
    xz = (np.arange(g_child)[:, None] * k_z + z[None, :]) * k_x + x_labels  # one key space per child
    n_xz, n_xyz = _nested_key_counts(xz, y[None, :], k_y)
    w = n_xz * n_yz[None, :] / (n * n_z[None, :])          # r_ik r_jk / r_k
    t = n_xyz * n_z[None, :] / (n_xz * n_yz[None, :])      # r_ijk r_k / (r_ik r_jk)
    return (w * g_divergence(t) / n_xyz).sum(axis=1)


def acmi_layer(child: np.ndarray, parent: np.ndarray, child_groups: Groups | None = None,
               parent_groups: Groups | None = None, *, phi: np.ndarray | float | None = None,
               eps: float = DEFAULT_EPS, z_occupancy: float | None = None, c_h: int = DEFAULT_C_H,
               proj_dim: int | None = None, n_hashes: int = DEFAULT_N_HASHES, seed: int = 0,
               parents_to_score: Sequence[int] | None = None) -> np.ndarray:
    """ACMI eta[c, p] = I_phi(X = child group c; Y = parent group p | Z = every other parent) for one layer pair.

    ``child`` (N, C_child) and ``parent`` (N, C_parent) are activations of the same N samples;
    groups default to one per filter. ``phi``: None (= 1), a scalar, or a (G_child, G_parent) array
    of per-pair multipliers (see ``phi_from_weights`` in connectivity). Returns a float64 array
    (G_child, G_parent) in [0, 1] for phi in [0, 1]; columns not in ``parents_to_score`` are NaN.
    """
    child, parent, cg, pg = _layer_inputs(child, parent, child_groups, parent_groups, 8, "ACMI")
    n = len(child)
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if n_hashes < 1:
        raise ValueError(f"n_hashes must be >= 1, got {n_hashes}")
    k = proj_dim or _auto_proj_dim(n)
    occupancy = z_occupancy or DEFAULT_Z_OCCUPANCY
    xs, ps = standardize(child), standardize(parent)
    todo = list(range(len(pg)) if parents_to_score is None else parents_to_score)
    out = np.full((len(cg), len(pg)), np.nan)
    out[:, todo] = 0.0
    for draw in range(n_hashes):  # an ensemble of independent hash draws, averaged (as EDGE does)
        out[:, todo] += _acmi_one_draw(xs, ps, cg, pg, todo, eps, occupancy, c_h, k, seed, draw) / n_hashes
    if phi is not None:
        out = out * np.broadcast_to(np.asarray(phi, dtype=np.float64), out.shape)
    return out


def _acmi_one_draw(xs: np.ndarray, ps: np.ndarray, cg: list[np.ndarray], pg: list[np.ndarray], todo: list[int],
                   eps: float, occupancy: float, c_h: int, k: int, seed: int, draw: int) -> np.ndarray:
    """One hash draw of the layer estimate for the parent groups ``todo``: (G_child, len(todo)).

    Random streams are keyed by (seed, draw, role[, group]) so a pair's score does not depend on
    which other pairs are scored.
    """
    n = len(xs)

    def stream(*key: int) -> np.random.Generator:
        return np.random.default_rng([seed, draw, *key])

    def group_labels(u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # X and Y: floor-hash up to k standardised coordinates directly, project larger groups first.
        if u.shape[1] > k:
            u = u @ _projection(u.shape[1], k, rng)
            u = u / np.maximum(u.std(axis=0), 1e-12)
        return _Hash(u.shape[1], eps, n, c_h, rng).labels(u)

    x_labels = np.stack([group_labels(xs[:, g], stream(0, c)) for c, g in enumerate(cg)])
    # Z = the parents without group p. The whole parent layer is projected once (used as is when it is
    # small); Z_{-p} = P R - P_p R_p only subtracts group p's share, so Z is never re-hashed from scratch.
    d_par = ps.shape[1]
    z_rng = stream(1)
    proj = _projection(d_par, k, z_rng) if d_par > k else np.eye(d_par)
    full = ps @ proj
    scale = np.maximum(full.std(axis=0), 1e-12)
    z_hash = _Hash(full.shape[1], _eps_for_occupancy(full / scale, occupancy, seed + draw), n, c_h, z_rng)
    out = np.empty((len(cg), len(todo)))
    for col, p in enumerate(todo):
        g = pg[p]
        z = (full - ps[:, g] @ proj[g]) / scale
        z_labels = z_hash.labels(z) if len(g) < d_par else np.zeros(n, dtype=np.int64)  # no Z: plain AMI
        out[:, col] = _acmi_for_parent(x_labels, group_labels(ps[:, g], stream(2, p)), z_labels)
    return out


def acmi(x: np.ndarray, y: np.ndarray, z: np.ndarray | None = None, *, phi: float = 1.0, eps: float = DEFAULT_EPS,
         z_occupancy: float | None = None, c_h: int = DEFAULT_C_H, proj_dim: int | None = None,
         n_hashes: int = DEFAULT_N_HASHES, seed: int = 0) -> float:
    """Hash-based ACMI estimate of I_phi(X; Y | Z) (thesis Eq. 4.7) from N samples; in [0, 1] for phi in [0, 1].

    ``x`` (N, dx), ``y`` (N, dy), ``z`` (N, dz) or None (then the unconditional AMI).
    """
    x, parent, child_groups, parent_groups = _single_pair(x, y, z)
    return float(acmi_layer(x, parent, child_groups, parent_groups, phi=phi, eps=eps,
                            z_occupancy=z_occupancy, c_h=c_h, proj_dim=proj_dim, n_hashes=n_hashes, seed=seed,
                            parents_to_score=[0])[0, 0])


# --------------------------------------------------------------------------------------------------
# MST conditional GMI (MINT)
# --------------------------------------------------------------------------------------------------

def _sqdist(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Squared Euclidean distances between the rows of a and b (float64, clipped at 0)."""
    b = a if b is None else b
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def dense_mst(weights: np.ndarray) -> np.ndarray:
    """Minimal spanning tree of a complete graph given its dense symmetric weight matrix (Prim, O(V^2)).

    Returns the (V-1, 2) array of tree edges. Any monotone transform of the weights (e.g. squared
    distances instead of distances) gives the same tree.
    """
    v = len(weights)
    if v < 2:
        return np.zeros((0, 2), dtype=np.int64)
    in_tree = np.zeros(v, dtype=bool)
    in_tree[0] = True
    best = weights[0].astype(np.float64, copy=True)
    best[0] = np.inf
    link = np.zeros(v, dtype=np.int64)
    edges = np.empty((v - 1, 2), dtype=np.int64)
    for e in range(v - 1):
        u = int(np.argmin(best))
        edges[e] = (link[u], u)
        in_tree[u] = True
        best[u] = np.inf
        row = weights[u]
        closer = (row < best) & ~in_tree
        best[closer] = row[closer]
        link[closer] = u
    return edges


def friedman_rafsky(weights: np.ndarray, n_first: int) -> np.ndarray | int:
    """Number of MST edges joining a node < n_first to a node >= n_first (the dichotomous edges R_n).

    ``weights`` (V, V) gives an int; a stack (B, V, V) of graphs on the same nodes gives B counts,
    computed by one batched Prim (the Python loop over V steps is shared by the B trees).
    """
    w = np.asarray(weights)
    if w.ndim == 2:
        edges = dense_mst(w)
        return int(np.sum((edges[:, 0] < n_first) != (edges[:, 1] < n_first)))
    b, v, _ = w.shape
    rows = np.arange(b)
    first = np.arange(v) < n_first
    best = w[:, 0].astype(np.float64, copy=True)
    best[:, 0] = np.inf
    link = np.zeros((b, v), dtype=np.int64)
    done = np.zeros((b, v), dtype=bool)
    done[:, 0] = True
    cross = np.zeros(b, dtype=np.int64)
    for _ in range(v - 1):
        u = best.argmin(axis=1)
        cross += first[link[rows, u]] != first[u]
        done[rows, u] = True
        best[rows, u] = np.inf
        cand = np.where(done, np.inf, w[rows, u])
        closer = cand < best
        np.copyto(best, cand, where=closer)
        np.copyto(link, np.broadcast_to(u[:, None], link.shape), where=closer)
    return cross


def nn_bootstrap(z2: np.ndarray, z3: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Alg. 3: for each sample of U_2, the index of the sample of U_3 whose z is nearest (Euclidean).

    The conditionally independent sample is then (x_2, y_3[nn], z_2). Empty Z: a random matching.
    """
    if z2.shape[1] == 0:
        rng = rng or np.random.default_rng(0)
        return rng.integers(0, len(z3), size=len(z2))
    return np.argmin(_sqdist(z2, z3), axis=1)


def _thirds(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    m = n // 3
    return perm[:m], perm[m:2 * m], perm[2 * m:3 * m]


def mst_cmi_layer(child: np.ndarray, parent: np.ndarray, child_groups: Groups | None = None,
                  parent_groups: Groups | None = None, *, seed: int = 0, standardize_inputs: bool = True,
                  parents_to_score: Sequence[int] | None = None, memory_mb: float = 128.0) -> np.ndarray:
    """MINT's conditional GMI rho[c, p] = I(child group c; parent group p | other parents), Alg. 2-3, per layer pair.

    The same random split into thirds is used for every pair of the layer pair. Returns (G_child,
    G_parent) in [0, 1]; columns not in ``parents_to_score`` are NaN. ``memory_mb`` bounds the
    stack of distance matrices whose spanning trees are built together.
    """
    child, parent, cg, pg = _layer_inputs(child, parent, child_groups, parent_groups, 6, "the MST estimator")
    n_all = len(child)
    rng = np.random.default_rng(seed)
    if standardize_inputs:
        child, parent = standardize(child), standardize(parent)
    else:
        child, parent = child.astype(np.float64), parent.astype(np.float64)
    a, b, c3 = _thirds(n_all, rng)
    n = len(a)
    union = np.concatenate([a, b])            # U_n then the (x_2, ., z_2) rows of the bootstrap copy
    z_full = _sqdist(parent[union])           # squared distances over all parents, shared by every p
    z_bc_full = _sqdist(parent[b], parent[c3])
    per_matrix = 4 * len(union) ** 2
    batch = max(1, int(memory_mb * 2**20 // per_matrix))
    child_u = child[union]

    def x_distances(start: int, stop: int) -> np.ndarray:
        return np.stack([_sqdist(child_u[:, g]) for g in cg[start:stop]]).astype(np.float32)

    cached = x_distances(0, len(cg)) if len(cg) * per_matrix <= memory_mb * 2**20 else None
    out = np.full((len(cg), len(pg)), np.nan)
    todo = range(len(pg)) if parents_to_score is None else parents_to_score
    for p in todo:
        g = pg[p]
        yp = parent[:, g]
        z_bc = z_bc_full - _sqdist(yp[b], yp[c3])  # distances on Z = parents without group p
        if len(g) == parent.shape[1]:
            nn = rng.integers(0, len(c3), size=len(b))
        else:
            nn = np.argmin(z_bc, axis=1)
        y_union = np.concatenate([yp[a], yp[c3[nn]]])  # U_n keeps its y; the copy takes y_3 of the NN
        base = (z_full - _sqdist(yp[union]) + _sqdist(y_union)).astype(np.float32)
        for start in range(0, len(cg), batch):  # children share the Prim loop, within a memory budget
            stop = min(start + batch, len(cg))
            stack = base[None] + (cached[start:stop] if cached is not None else x_distances(start, stop))
            r = friedman_rafsky(stack, n)
            out[start:start + len(stack), p] = np.clip(1.0 - r / n, 0.0, 1.0)
    return out


def mst_cmi(x: np.ndarray, y: np.ndarray, z: np.ndarray | None = None, *, seed: int = 0,
            standardize_inputs: bool = True) -> float:
    """MINT's MST estimate of the conditional geometric MI I(X; Y | Z) (Alg. 2-3), in [0, 1]."""
    x, parent, child_groups, parent_groups = _single_pair(x, y, z)
    return float(mst_cmi_layer(x, parent, child_groups, parent_groups, seed=seed,
                               standardize_inputs=standardize_inputs, parents_to_score=[0])[0, 0])
