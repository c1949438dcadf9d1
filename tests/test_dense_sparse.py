"""Plain-Python tests of the Dense-and-Sparse methods (sensq.dense_sparse, squeezellm, gwq, requant).

The notebooks carry the lesson-sized checks; these are the property tests against independent references
(scikit-learn's KMeans), bad input, and the model-level entry points on a tiny Llama. Each test runs in seconds.
"""
import itertools, math, os
import numpy as np
import pytest
import torch
from sensq.quant import QuantSpec, rtn, quantize, dequantize
from sensq.models import tiny_llama, linear_layers
from sensq.eval import lm_loss
from sensq.dense_sparse import (CodebookTensor, DenseSparseTensor, DenseSparseLinear, dense_sparse_from, ds_bits,
                                sparse_bits, mask_to_csr)
from sensq.squeezellm import (lloyd_1d, weighted_kmeans, weighted_quantiles, kmeanspp_init, rtn_levels, nearest_codes,
                              weighted_sq_error, iqr_scores, outlier_masks, squeezellm_quantize_model)

torch.set_num_threads(1)


def _heavy(R, C, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(R, C, generator=g) * (0.5 + torch.rand(R, 1, generator=g)) + 0.2 * torch.randn(R, C, generator=g).pow(3)
    f = torch.rand(R, C, generator=g).pow(3)
    return W, f


# ---------------------------------------------------------------- weighted k-means
@pytest.mark.parametrize('weighted', [False, True])
def test_lloyd_equals_sklearn(weighted):
    "Same start, same number of updates, tol=0: centroids equal scikit-learn's (uniform and Fisher-like weights)."
    KMeans = pytest.importorskip('sklearn.cluster').KMeans
    W, f = _heavy(12, 300, 0)
    if not weighted: f = torch.ones_like(f)
    init = weighted_quantiles(W, f, 8)
    for n_iter in (1, 5, 300):
        c, _ = lloyd_1d(W, f, init, n_iter)
        for r in range(len(W)):
            km = KMeans(8, init=init[r].numpy()[:, None], n_init=1, max_iter=n_iter, tol=0.0, algorithm='lloyd')
            km.fit(W[r].double().numpy()[:, None], sample_weight=f[r].double().numpy())
            np.testing.assert_allclose(np.sort(km.cluster_centers_[:, 0]), c[r].numpy(), rtol=1e-10, atol=1e-12)


def test_uniform_weights_equal_unweighted():
    "Uniform weights (any constant) give exactly the unweighted k-means from the same start."
    W, _ = _heavy(10, 200, 1)
    init = weighted_quantiles(W, torch.ones_like(W), 4)
    c1, _ = lloyd_1d(W, None, init, 50)
    c2, _ = lloyd_1d(W, torch.full_like(W, 0.37), init, 50)
    torch.testing.assert_close(c1, c2, rtol=1e-12, atol=1e-14)


def _brute_force_kmeans(w, f, k):
    "Optimal weighted 1-D k-means error of one row: every split of the sorted values into k contiguous cells (float64)."
    o = w.double().argsort(); x, g = w.double()[o], f.double()[o]
    n = len(x)
    cost = [[0.0] * (n + 1) for _ in range(n + 1)]              # cost[a][c]: cell x[a:c] around its weighted mean
    for a in range(n):
        for c in range(a + 1, n + 1):
            m = (g[a:c] * x[a:c]).sum() / g[a:c].sum()
            cost[a][c] = float((g[a:c] * (x[a:c] - m) ** 2).sum())
    return min(sum(cost[a][c] for a, c in zip((0,) + cuts, cuts + (n,))) for cuts in itertools.combinations(range(1, n), k - 1))


@pytest.mark.parametrize('bits', [2, 3])
def test_kmeans_against_brute_force_optimum(bits):
    """Tiny rows (11 values, 4 or 8 centroids), checked against the exhaustive optimum over contiguous partitions.
    No start guarantees the global optimum (Lloyd stops in local optima); the default starts (quantiles and k-means++,
    the better per row) were measured over seeds 0-4 (fp32 codebook, guard off):
      total error / optimum : 2 bits 1.20 1.32 1.10 1.08 1.23   3 bits 1.62 1.75 1.51 1.54 1.61
      rows at the optimum   : 2 bits 11 20 18 18 11 of 24       3 bits 9 14 10 10 10 of 24
      RTN total / optimum   : 2 bits 4.2-7.1                    3 bits 41-82
    Asserted well inside the worst seed: total <= 1.6x (2 bits) / 2.2x (3 bits) of the optimum, >= 6 rows at it."""
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(24, 11, generator=g) + 0.3 * torch.randn(24, 11, generator=g).pow(3)
        f = torch.rand(24, 11, generator=g).pow(2) + 0.01
        opt = torch.tensor([_brute_force_kmeans(W[r], f[r], 2**bits) for r in range(24)], dtype=torch.float64)
        ct, _ = weighted_kmeans(W, f, bits, codebook_dtype=torch.float32, rtn_guard=False)
        e = weighted_sq_error(W, ct.dequantize(), f)
        assert (e >= opt * (1 - 1e-6)).all()                   # nothing beats the optimum (fp32 centroids: 1e-6 slack)
        assert e.sum() <= (1.6 if bits == 2 else 2.2) * opt.sum(), (seed, float(e.sum() / opt.sum()))
        assert int(((e - opt) <= 1e-6 * opt).sum()) >= 6, (seed, int(((e - opt) <= 1e-6 * opt).sum()))


@pytest.mark.parametrize('bits', [2, 3, 4])
@pytest.mark.parametrize('init', ['quantile', 'kmeans++', ('quantile', 'kmeans++')])
def test_kmeans_converges_to_a_lloyd_fixed_point(bits, init):
    """With the RTN guard off, every centroid is the Fisher-weighted mean of the weights coded to it (a float64 mean
    rounded once to the fp32 codebook: 2^-24 relative, so 1e-6 of the largest centroid is wide), and the codes are the
    nearest centroids. Neither is implied by the guard."""
    W, f = _heavy(40, 160, bits)
    ct, st = weighted_kmeans(W, f, bits, init=init, codebook_dtype=torch.float32, rtn_guard=False)
    assert max(st['iters'].values()) < 100, st['iters']        # converged before the cap
    k, codes = 2**bits, ct.codes.long()
    wsum = torch.zeros(40, k, dtype=torch.float64).scatter_add_(1, codes, f.double())
    means = torch.zeros(40, k, dtype=torch.float64).scatter_add_(1, codes, (f * W).double()) / wsum
    used = wsum > 0
    assert (ct.codebook.double()[used] - means[used]).abs().max() <= 1e-6 * ct.codebook.abs().max()
    d = (W.double()[..., None] - ct.codebook.double()[:, None, :]).abs()   # (R, C, k) distance to every centroid
    assert (d.gather(2, codes[..., None])[..., 0] <= d.min(2).values + 1e-12).all()
    assert ct.codes.dtype == torch.uint8 and ct.codebook.dtype == torch.float32
    ct16, _ = weighted_kmeans(W, f, bits, init=init)
    assert ct16.codebook.dtype == torch.float16 and ct16.codes.dtype == torch.uint8


def test_kmeans_deterministic_and_bad_input():
    W, f = _heavy(8, 64, 3)
    a, _ = weighted_kmeans(W, f, 3, init='kmeans++', seed=5)
    b, _ = weighted_kmeans(W, f, 3, init='kmeans++', seed=5)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.codebook, b.codebook)
    with pytest.raises(ValueError, match='nonnegative'): weighted_kmeans(W, -f, 3)
    with pytest.raises(ValueError, match='bits must be in 2..8'): weighted_kmeans(W, f, 1)
    Wn = W.clone(); Wn[0, 0] = float('nan')
    with pytest.raises(ValueError, match='non-finite'): weighted_kmeans(Wn, f, 3)


# ---------------------------------------------------------------- dense + sparse
@pytest.mark.parametrize('kind', ['uniform', 'codebook'])
def test_dense_sparse_reconstruction_and_module(kind):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(33, 70, generator=g)
    M = torch.rand(33, 70, generator=g) < 0.03
    if kind == 'uniform':
        spec = QuantSpec(3, 16)
        ds = dense_sparse_from(W, M, spec)
        dense_ref = dequantize(quantize(W.masked_fill(M, 0.), spec)).float()
    else:
        ct, _ = weighted_kmeans(W.masked_fill(M, 0.), (~M).float(), 3)
        ds = dense_sparse_from(W, M, ct)
        dense_ref = ct.dequantize()
    What = ds.reconstruct()
    D = ds.dense_part()                                         # codes at every position, sparse ones included
    assert torch.equal(What[M], D[M] + (W[M] - D[M]).half().float())   # additive: D + fp16(w - D)
    assert torch.equal(What[~M], dense_ref[~M])
    assert torch.equal(ds.packed().dequantize(), What)
    x = torch.randn(3, 5, 70, generator=g)
    # both sides sum 70 fp32 products (+ the sparse ones) in different orders: each within 72·2^-24·Σ|x_j w_j| of exact
    tol = 2 * 72 * 2**-24 * (x.abs() @ What.abs().T).max().item()
    torch.testing.assert_close(DenseSparseLinear(ds)(x), x @ What.T, rtol=0, atol=tol)
    b = ds_bits(ds)
    # by hand, 33x70: 3-bit codes 33·70·3 = 6930, plus per row either 5 groups (16,16,16,16,6) of an fp16 scale and a
    # 3-bit integer zero, 33·5·19 = 3135, or a codebook of 8 fp16 centroids, 33·8·16 = 4224
    assert b['dense'] == (6930 + 3135 if kind == 'uniform' else 6930 + 4224)
    assert b['sparse'] == 48 * int(M.sum())                     # fp16 value + 32-bit index per entry
    assert ds_bits(ds, 'csr32')['sparse'] == 48 * int(M.sum()) + 32 * 34   # + 32-bit row pointers, d_row + 1 of them


def test_value_dtype_fp32_within_rounding():
    W = torch.randn(4, 9)
    M = W.abs() > 1
    ds = dense_sparse_from(W, M, QuantSpec(4, None), value_dtype=torch.float32)
    D = ds.dense_part()
    assert torch.equal(ds.reconstruct()[M], D[M] + (W[M] - D[M]))   # w up to the float32 rounding of (w - D) + D
    assert ((ds.reconstruct() - W)[M].abs() <= 2**-24 * (W[M].abs() + (W - D)[M].abs())).all()
    assert ds_bits(ds)['sparse'] == int(M.sum()) * (32 + 32)


def test_dense_sparse_bad_input():
    W = torch.randn(4, 6)
    with pytest.raises(ValueError, match='mask must be a bool tensor'): dense_sparse_from(W, torch.zeros(4, 5, dtype=torch.bool), QuantSpec(3, None))
    with pytest.raises(ValueError, match="unknown sparse format"): sparse_bits(3, (4, 6), 'bsr')
    with pytest.raises(ValueError, match='inconsistent CSR'):
        crow, col, val = mask_to_csr(W, W > 0)
        DenseSparseTensor(quantize(W, QuantSpec(3, None)), crow, col[:-1], val[:-1])
    with pytest.raises(ValueError, match='input has 5 features'): DenseSparseLinear(dense_sparse_from(W, W > 1, QuantSpec(3, None)))(torch.randn(2, 5))


def test_iqr_outliers_global_count():
    W = {'a': torch.randn(20, 30), 'b': 3 * torch.randn(10, 30)}
    m = outlier_masks(W, 0.02)
    assert sum(int(v.sum()) for v in m.values()) == round(0.02 * 900)
    s = {k: iqr_scores(w) for k, w in W.items()}
    kept_min = min(float(s[k][m[k]].min()) for k in m if m[k].any())
    rest_max = max(float(s[k][~m[k]].max()) for k in m)
    assert kept_min >= rest_max


def test_squeezellm_model_tiny():
    model = tiny_llama(seed=0)
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    W0 = {k: l.weight.detach().clone() for k, l in linear_layers(model).items()}
    st = squeezellm_quantize_model(model, calib, QuantSpec(3, None), progress=False, outliers=0.0045, sensitive=0.0005)
    n = sum(w.numel() for w in W0.values())
    assert st['n_outliers'] == round(0.0045 * n)
    assert st['method'] == 'squeezellm' and st['n_layers'] == len(W0)
    st2 = squeezellm_quantize_model(tiny_llama(seed=0), calib, QuantSpec(3, None), progress=False, outliers=0.0045,
                                    sensitive=0.0005, return_tensors=True)
    for k, l in linear_layers(model).items():
        ds = st2['tensors'][k]
        assert torch.equal(l.weight.detach(), ds.reconstruct())        # what was written is the container's Ŵ
        M = ds.mask()
        for row, m in zip(l.weight.detach(), M):                      # <= 2**3 dense values per row + sparse ones
            assert len(torch.unique(row[~m])) <= 8
    with torch.no_grad(): assert math.isfinite(lm_loss(model, calib).item())


# ---------------------------------------------------------------- GWQ
from sensq.taylor import loss_gradient
from sensq.gwq import gwq_quantize_model, gwq_scores, gwq_masks


@pytest.mark.parametrize('score,base', [('g', 'rtn'), ('gw', 'rtn'), ('gw', 'gptq')])
def test_gwq_keeps_exact_topk(score, base):
    "Each matrix keeps exactly round(r*n) weights, and they are the top scores (|g| or |g*w| at the original weights)."
    model = tiny_llama(seed=1)
    calib = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(2))
    lins = linear_layers(model)
    W0 = {k: l.weight.detach().clone() for k, l in lins.items()}
    g = loss_gradient(model, calib[:1], list(lins), progress=False)
    st = gwq_quantize_model(model, calib, QuantSpec(3, 32), progress=False, ratio=0.02, score=score, base=base,
                            return_tensors=True)
    for k, ds in st['tensors'].items():
        s = g[k].abs() if score == 'g' else (g[k] * W0[k]).abs()
        M = ds.mask()
        assert int(M.sum()) == round(0.02 * M.numel())
        assert float(s[M].min()) >= float(s[~M].max())
        D = ds.dense_part()
        if base == 'rtn': assert torch.equal(lins[k].weight.detach()[M], D[M] + (W0[k][M] - D[M]).half().float())
        assert torch.equal(lins[k].weight.detach(), ds.packed().dequantize())      # simulated = packed
    assert st['n_kept'] == sum(round(0.02 * w.numel()) for w in W0.values())


def test_gwq_bad_input():
    model, calib = tiny_llama(), torch.randint(0, 256, (2, 16))
    with pytest.raises(ValueError, match="unknown GWQ base"): gwq_quantize_model(model, calib, QuantSpec(3), base='awq', progress=False)
    with pytest.raises(ValueError, match='n_grad must be in 1..2'): gwq_quantize_model(model, calib, QuantSpec(3), n_grad=3, progress=False)
    with pytest.raises(ValueError, match='ratio must be in'): gwq_masks({'a': torch.ones(3, 3)}, 1.5)


# ---------------------------------------------------------------- ReQuant
from sensq.requant import (allocate_outliers, select_significant, select_random, split_count, requant_quantize_model)


def test_allocation_spends_exact_budget_random_curves():
    "Random non-convex curves, every budget: the allocation sums to the budget and respects each layer's grid."
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        curves = {}
        for l in range(5):
            m = [0] + sorted(set(torch.randint(1, 400, (5,), generator=g).tolist()))
            J = torch.rand(len(m), generator=g).mul(10).tolist()
            curves[f'l{l}'] = (m, J)
        cap = sum(m[-1] for m, _ in curves.values())
        for budget in (0, 1, cap // 3, cap - 1, cap):
            a = allocate_outliers(curves, budget, lookahead=bool(trial % 2))
            assert sum(a.values()) == budget
            assert all(0 <= a[k] <= curves[k][0][-1] for k in a)
    with pytest.raises(ValueError, match='exceeds what the grid can place'): allocate_outliers(curves, cap + 1)
    with pytest.raises(ValueError, match='strictly increasing from 0'): allocate_outliers({'a': ([1, 2], [0., 0.])}, 1)


def test_select_significant_excludes_sparse_and_nonpositive():
    g = torch.Generator().manual_seed(1)
    scores = {'a': torch.randn(20, 30, generator=g), 'b': torch.randn(10, 30, generator=g)}
    sparse = {k: torch.rand(v.shape, generator=g) < 0.2 for k, v in scores.items()}
    for k_l in select_significant(scores, sparse, 50, 'layer').items():   # per layer: its share, its own top scores
        k, m = k_l
        assert float(scores[k][m].min()) >= float(scores[k][~m & ~sparse[k]].max()) and not (m & sparse[k]).any()
    assert sum(int(m.sum()) for m in select_significant(scores, sparse, 50, 'layer').values()) == 50
    sel = select_significant(scores, sparse, 50, 'global')
    assert sum(int(m.sum()) for m in sel.values()) == 50
    assert not any((sel[k] & sparse[k]).any() for k in sel)
    chosen = torch.cat([scores[k][sel[k]] for k in sel]); rest = torch.cat([scores[k][~sel[k] & ~sparse[k]] for k in sel])
    assert float(chosen.min()) >= float(rest.max()) and float(chosen.min()) > 0
    r = select_random(sparse, 40, torch.Generator().manual_seed(0))
    assert sum(int(m.sum()) for m in r.values()) == 40 and not any((r[k] & sparse[k]).any() for k in r)
    assert split_count(7, 3) == [3, 2, 2]


def test_requant_random_and_uniform_ablations_count_exactly():
    model = tiny_llama(seed=0)
    calib = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(3))
    N = sum(l.weight.numel() for l in linear_layers(model).values())
    st = requant_quantize_model(model, calib, QuantSpec(3, 32), base='rtn', outliers=0.004, significant=0.004, steps=2,
                                outlier_alloc='uniform', selection='random', progress=False, return_tensors=True)
    assert st['n_significant'] == round(0.004 * N)
    assert st['n_outliers'] == sum(round(0.004 * l.weight.numel()) for l in linear_layers(model).values())
    assert sum(d.nnz for d in st['tensors'].values()) == st['n_outliers'] + st['n_significant']
    assert st['bits_per_weight'] == pytest.approx(8 * sum(d.packed().nbytes() for d in st['tensors'].values()) / N)


def test_requant_bad_input():
    model, calib = tiny_llama(), torch.randint(0, 256, (2, 16))
    with pytest.raises(ValueError, match="unknown ReQuant base"): requant_quantize_model(model, calib, QuantSpec(3), base='awq', progress=False)
    with pytest.raises(ValueError, match='grid must start at 0'): requant_quantize_model(model, calib, QuantSpec(3), grid=(.01, .02), progress=False)
    with pytest.raises(ValueError, match='pqi_windows must be in 1..2'): requant_quantize_model(model, calib, QuantSpec(3), pqi_windows=5, progress=False)
    with pytest.raises(ValueError, match='exceeds what the grid can place'):
        requant_quantize_model(model, calib, QuantSpec(3), outliers=0.05, grid=(0, .01), progress=False)


def test_requant_curves_reuse_gives_same_model():
    "Passing a run's Algorithm 1 curves back skips them and reproduces the same quantized weights."
    calib = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(4))
    m1, m2 = tiny_llama(seed=2), tiny_llama(seed=2)
    kw = dict(base='rtn', outliers=0.005, significant=0, progress=False)
    st1 = requant_quantize_model(m1, calib, QuantSpec(3, 32), **kw)
    st2 = requant_quantize_model(m2, calib, QuantSpec(3, 32), curves=st1['curves'], **kw)
    for l1, l2 in zip(linear_layers(m1).values(), linear_layers(m2).values()):
        assert torch.equal(l1.weight.detach(), l2.weight.detach())
    assert st2['n_outliers'] == st1['n_outliers'] == round(0.005 * sum(l.weight.numel() for l in linear_layers(m1).values()))
    with pytest.raises(ValueError, match='curves given for a different set of layers'):
        requant_quantize_model(tiny_llama(), calib, QuantSpec(3, 32), curves={'x': ([0, 1], [1., 0.])}, **kw)
