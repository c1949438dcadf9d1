"""Every method creates its tensors on its input's device.

There is no GPU in CI, so a second device is emulated: the inputs stay on the CPU while the *default* device is
switched to 'meta'. A tensor a method creates without `device=` (a mask, an index, an `arange`) then lands on 'meta';
the first operation that mixes it with the CPU inputs raises, and anything that reaches the result is caught by the
device check below. On a GPU the same code would build that tensor on the CPU next to CUDA inputs: the bug is the same,
the roles of the two devices are swapped. Each test also checks that the emulated run returns exactly what a plain CPU
run returns, so the fixes changed no arithmetic.
"""
import contextlib, dataclasses, math
import pytest
import torch
from torch import Tensor
from sensq.quant import QuantSpec, quantize
from sensq.dense_sparse import DenseSparseLinear, dense_sparse_from, fill_masked, ds_bits, mask_to_csr, replace_linear
from sensq.squeezellm import (topk_mask, outlier_masks, weighted_kmeans, squeezellm_layer, lloyd_1d, weighted_quantiles,
                              kmeanspp_init, rtn_levels, nearest_codes, iqr_scores)
from sensq.requant import first_mask, outlier_order, select_significant, select_random, RTNBase, GPTQBase, outlier_curve
from sensq.gwq import gwq_scores, gwq_masks, gwq_rtn_layer, gptq_keep_quantize
from sensq.gptq import gptq_quantize
from sensq.spqr import spqr_quantize
from sensq.sensitivity import top_overlap, spearman, rank_agreement
from sensq.taylor import obs_scores

torch.set_num_threads(1)


@contextlib.contextmanager
def other_default_device():
    "Inputs on the CPU, tensors created without `device=` on 'meta'."
    prev = torch.get_default_device()
    torch.set_default_device('meta')
    try: yield
    finally: torch.set_default_device(prev)


def tensors_of(x):
    "Every tensor inside a result (tensors, tuples, lists, dicts, dataclasses)."
    if isinstance(x, Tensor): yield x
    elif isinstance(x, (tuple, list)):
        for v in x: yield from tensors_of(v)
    elif isinstance(x, dict):
        for v in x.values(): yield from tensors_of(v)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        for f in dataclasses.fields(x): yield from tensors_of(getattr(x, f.name))


def same_on_cpu(fn, *args, **kw):
    "Run `fn` plainly and with the emulated second device; the results must agree exactly and live on the CPU."
    ref = fn(*args, **kw)
    with other_default_device(): got = fn(*args, **kw)
    a, b = list(tensors_of(ref)), list(tensors_of(got))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        name = getattr(fn, '__name__', type(fn).__name__)
        assert y.device.type == 'cpu', f"{name} returned a tensor on {y.device}"
        if x.layout == torch.strided: assert torch.equal(x, y), name
        else: assert torch.equal(x.to_dense(), y.to_dense()), name
    return got


def test_emulation_catches_a_cpu_mask_indexed_by_device_indices():
    "The harness itself: the pre-fix pattern of `topk_mask`/`first_mask` fails under it."
    def old_topk_mask(s, k):
        m = torch.zeros(s.numel(), dtype=torch.bool)          # no device=: the bug
        m[s.flatten().topk(k).indices] = True
        return m.view(s.shape)
    s = torch.randn(4, 5)
    with pytest.raises(AssertionError, match='returned a tensor on meta'): same_on_cpu(old_topk_mask, s, 3)
    def old_rows(crow):                                      # pre-fix `DenseSparseTensor.rows`: arange on the default device
        return torch.repeat_interleave(torch.arange(len(crow) - 1), crow.diff())
    with pytest.raises((AssertionError, RuntimeError)): same_on_cpu(old_rows, torch.tensor([0, 2, 2, 3]))


def _heavy(R=12, C=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(R, C, generator=g) + 0.3 * torch.randn(R, C, generator=g).pow(3)
    return W, torch.rand(R, C, generator=g)


def _hessian(d, seed=1):
    X = torch.randn(d, 3 * d, generator=torch.Generator().manual_seed(seed))
    return 2 * X @ X.T / (3 * d)


# ---------------------------------------------------------------- SqueezeLLM
def test_squeezellm_functions_follow_the_input_device():
    W, f = _heavy()
    same_on_cpu(topk_mask, W, 7)
    same_on_cpu(topk_mask, W, 7, exclude=W > 1)
    same_on_cpu(iqr_scores, W)
    same_on_cpu(outlier_masks, {'a': W, 'b': 2 * W[:5]}, 0.02)
    same_on_cpu(outlier_masks, {'a': W, 'b': 2 * W[:5]}, 0.02, 'layer')
    same_on_cpu(rtn_levels, W, 3)
    same_on_cpu(weighted_quantiles, W, f, 8)
    same_on_cpu(kmeanspp_init, W, f, 8, seed=3)
    init = weighted_quantiles(W, f, 8)
    same_on_cpu(lloyd_1d, W, f, init, 20)
    same_on_cpu(nearest_codes, W, init.sort(1).values)
    for init in ('quantile', 'rtn', 'kmeans++', ('quantile', 'kmeans++')):
        same_on_cpu(weighted_kmeans, W, f, 3, init=init)
    same_on_cpu(squeezellm_layer, W, f, 3, W.abs() > 2)


# ---------------------------------------------------------------- Dense-and-Sparse container and layer
def test_dense_sparse_container_follows_the_input_device():
    W, f = _heavy(9, 24)
    M = W.abs() > 1.5
    same_on_cpu(mask_to_csr, W, M)
    same_on_cpu(fill_masked, W, M, 8)
    for dense in (QuantSpec(3, 8), weighted_kmeans(fill_masked(W, M), f.masked_fill(M, 0), 3)[0]):
        ds = same_on_cpu(dense_sparse_from, W, M, dense)
        for meth in ('rows', 'mask', 'dense_part', 'reconstruct'): same_on_cpu(getattr(ds, meth))
        same_on_cpu(ds.add_sparse, (W.abs() < 0.01) & ~M, W)
        x = torch.randn(2, 3, 24)
        lin = DenseSparseLinear(ds, torch.randn(9))
        same_on_cpu(lin, x)
        assert ds_bits(ds) == ds_bits(ds.to('meta'))


def test_dense_sparse_linear_moves_with_the_module():
    "`module.to(device)` moves the container too (on a GPU: `.cuda()`); 'meta' stands for the other device."
    W, _ = _heavy(6, 16)
    net = torch.nn.Sequential(torch.nn.Linear(16, 6))
    ds = dense_sparse_from(W, W.abs() > 1.5, QuantSpec(3, 8))
    lin = replace_linear(net, '0', ds)
    net.to('meta')
    d = lin.ds
    assert {t.device.type for t in (d.crow, d.col, d.values, d.dense.codes, d.dense.scale, d.dense.zero, lin.bias)} == {'meta'}
    assert d.values.dtype == ds.values.dtype and d.dense.codes.dtype == torch.uint8
    assert ds.crow.device.type == 'cpu'                       # a moved copy: the original container is untouched
    net64 = torch.nn.Sequential(DenseSparseLinear(ds)).double()   # a dtype change leaves the stored dtypes alone
    assert net64[0].ds.values.dtype == ds.values.dtype and net64[0].ds.dense.scale.dtype == ds.dense.scale.dtype


# ---------------------------------------------------------------- GWQ, GPTQ, SpQR
@pytest.mark.parametrize('act_order', [False, True])
def test_gwq_gptq_spqr_follow_the_input_device(act_order):
    W, _ = _heavy(8, 24)
    H = _hessian(24)
    keep = same_on_cpu(gwq_masks, same_on_cpu(gwq_scores, {'a': H[:8]}, {'a': W}, 'gw'), 0.05)['a']
    same_on_cpu(gwq_rtn_layer, W, keep, QuantSpec(3, 8))
    r, vals = same_on_cpu(gptq_keep_quantize, W, H, QuantSpec(3, 8), keep, act_order=act_order)
    same_on_cpu(dense_sparse_from, W, keep, r, values=vals)
    same_on_cpu(gptq_quantize, W, H, QuantSpec(3, 8), act_order=act_order)
    same_on_cpu(gptq_quantize, W, H, QuantSpec(3, 8), act_order=act_order, static_groups=True)
    same_on_cpu(spqr_quantize, W, H, QuantSpec(3, 8, int_zero=False), act_order=act_order)


# ---------------------------------------------------------------- ReQuant
def test_requant_functions_follow_the_input_device():
    W, f = _heavy(10, 30)
    H = _hessian(30)
    for score in ('iqr', 'abs'):
        order = same_on_cpu(outlier_order, W, score)
        same_on_cpu(first_mask, order, 9, W.shape)
    scores = {'a': torch.randn(10, 30), 'b': torch.randn(5, 30)}
    sparse = {k: v.abs() > 2 for k, v in scores.items()}
    for scope in ('layer', 'global'): same_on_cpu(select_significant, scores, sparse, 12, scope)
    ref = select_random(sparse, 12, torch.Generator().manual_seed(0))
    with other_default_device(): got = select_random(sparse, 12, torch.Generator().manual_seed(0))
    assert all(got[k].device.type == 'cpu' and torch.equal(got[k], ref[k]) for k in ref)
    same_on_cpu(outlier_curve, RTNBase(QuantSpec(3, 10)), 'a', W, outlier_order(W), (0, 0.01, 0.05))
    same_on_cpu(outlier_curve, GPTQBase(QuantSpec(3, 10)), 'a', W, outlier_order(W), (0, 0.01, 0.05), H)


# ---------------------------------------------------------------- sensitivity helpers
def test_sensitivity_helpers_follow_the_input_device():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, generator=g), torch.randn(300, generator=g)
    a[:20] = b[:20]; a[100:110] = 0.5                          # ties for the average ranks
    ref = (top_overlap(a, b, 0.05), spearman(a, b))
    with other_default_device(): got = (top_overlap(a, b, 0.05), spearman(a, b))
    assert got == ref
    m = {'x': {'l': a.view(30, 10)}, 'y': {'l': b.view(30, 10)}}
    ref_rows = rank_agreement(m, 0.05)
    with other_default_device(): assert rank_agreement(m, 0.05) == ref_rows
    same_on_cpu(obs_scores, {'l': torch.randn(4, 12)}, {'l': _hessian(12)})


# ---------------------------------------------------------------- whole models (tiny Llama, one block)
@pytest.mark.parametrize('method', ['squeezellm', 'gwq', 'requant', 'gptq', 'spqr'])
def test_model_level_methods_follow_the_input_device(method):
    from sensq.models import tiny_llama, linear_layers
    from sensq.squeezellm import squeezellm_quantize_model
    from sensq.gwq import gwq_quantize_model
    from sensq.requant import requant_quantize_model
    from sensq.gptq import gptq_quantize_model
    from sensq.spqr import spqr_quantize_model
    calib = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    run = {'squeezellm': lambda m: squeezellm_quantize_model(m, calib, QuantSpec(3, None), progress=False, outliers=0.005, sensitive=0.001, n_iter=10),
           'gwq': lambda m: gwq_quantize_model(m, calib, QuantSpec(3, 32), progress=False, base='gptq', act_order=True),
           'requant': lambda m: requant_quantize_model(m, calib, QuantSpec(3, 32), progress=False, base='gptq', outliers=0.004,
                                                       significant=0.001, pqi_N=2),
           'gptq': lambda m: gptq_quantize_model(m, calib, QuantSpec(3, 32), progress=False, act_order=True),
           'spqr': lambda m: spqr_quantize_model(m, calib, progress=False)}[method]
    ref, got = tiny_llama(n_layers=1, seed=3), tiny_llama(n_layers=1, seed=3)
    run(ref)
    with other_default_device(): run(got)
    for (k, a), b in zip(linear_layers(ref).items(), linear_layers(got).values()):
        assert b.weight.device.type == 'cpu' and torch.equal(a.weight, b.weight), k
