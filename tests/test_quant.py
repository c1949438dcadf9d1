"Property tests for sensq.quant: RTN against an independent loop reference, bits accounting, bad input, Triton kernel."
import os
from fractions import Fraction
if not __import__('torch').cuda.is_available(): os.environ.setdefault("TRITON_INTERPRET", "1")
import numpy as np
import pytest
import torch
from sensq.quant import (QuantSpec, QuantizedTensor, group_bounds, num_groups, find_params, quantize_codes,
                         dequantize_codes, quantize, dequantize, rtn, rtn_triton, storage_bits, bits_per_weight)


KINDS = {"int_zero": {}, "minmax": {"int_zero": False}, "sym": {"sym": True}}  # the three grids (integer zero is the default)


def rtn_loop(W, bits, group_size, sym=False, int_zero=True):
    """Independent reference: a Python loop over rows and groups (each sliced out unpadded) in NumPy float32, the
    statistics stored in NumPy float16 (scales at least 2**-24). GPTQ's Quantizer written out by hand (integer zero by
    default, or sym); for int_zero=False the min–max grid stored as llama.cpp's Q4_1: m = the largest float16 <= min,
    s = fp16((max - m)/maxq), w = s*q + m."""
    W = np.asarray(W, dtype=np.float32); maxq = np.float32(2**bits - 1)
    f16 = lambda x: max(np.float32(np.float16(x)), np.float32(2**-24))
    Q, S, Z = np.empty_like(W), [], []
    g = W.shape[1] if group_size is None else group_size
    for i in range(W.shape[0]):
        S.append([]); Z.append([])
        for a in range(0, W.shape[1], g):
            w = W[i, a:a+g]
            if not int_zero:
                h = np.float16(w.min())
                m = np.float32(np.nextafter(h, np.float16(-np.inf)) if np.float32(h) > w.min() else h) + np.float32(0)  # never -0
                s = (w.max() - m) / maxq
                s = f16(np.float32(1) if s == 0 else s)  # constant fp16 group: codes 0 stand for m
                q = np.clip(np.round((w - m) / s), 0, maxq) + np.float32(0)
                Q[i, a:a+g] = s * q + m
                S[-1].append(s); Z[-1].append(m)
                continue
            xmin, xmax = min(w.min(), np.float32(0)), max(w.max(), np.float32(0))
            if sym:
                xmax = max(abs(xmin), xmax)
                if xmin < 0: xmin = -xmax
            if (xmax - xmin) / maxq == 0: xmin, xmax = np.float32(-1), np.float32(1)
            s = f16((xmax - xmin) / maxq)
            z = np.float32((maxq + 1) / 2) if sym else np.clip(np.round(-xmin / s), 0, maxq)
            q = np.clip(np.round(w / s + z), 0, maxq) + np.float32(0)  # + 0: a code 0 is +0 (round(-0.3) is -0.0)
            Q[i, a:a+g] = s * (q - z)
            S[-1].append(s); Z[-1].append(z + np.float32(0))
    return Q, np.array(S, dtype=np.float32), np.array(Z, dtype=np.float32)


def random_case(rng, grid=None):
    d_row, d_col = int(rng.integers(1, 17)), int(rng.integers(1, 300))
    g = [None, 1, 3, 16, 32, 64, 128, 256, int(rng.integers(1, 300))][int(rng.integers(0, 9))]
    grid = KINDS[grid] if grid is not None else list(KINDS.values())[int(rng.integers(0, 3))]
    spec = QuantSpec(int(rng.integers(2, 9)), g, **grid)
    W = rng.standard_normal((d_row, d_col)).astype(np.float32) * np.float32(10.0 ** rng.uniform(-4, 2))
    kind = rng.integers(0, 6)  # special rows: zeros, no negatives, exact ties on a power-of-two grid, far from 0, constant
    if kind == 1: W[0] = 0
    elif kind == 2: W[0] = np.abs(W[0])
    elif kind == 3: W = np.round(W * 4) / 4
    elif kind == 4: W[0] = np.abs(W[0]) + np.float32(3 * np.abs(W).max() + 1e-3)  # zero padding would change its last group
    elif kind == 5: W[0] = W[0, 0]
    return torch.from_numpy(W), spec


DEV = "cuda" if torch.cuda.is_available() else "cpu"  # rtn_triton needs CUDA tensors unless interpreted


def bits_of(t): return t.view({torch.float32: torch.int32, torch.float64: torch.int64}.get(t.dtype, torch.int16))


@pytest.mark.parametrize("grid", list(KINDS))
@pytest.mark.parametrize("seed", range(20))
def test_rtn_matches_loop_reference(seed, grid):
    W, spec = random_case(np.random.default_rng(seed), grid)
    Q_ref, S_ref, Z_ref = rtn_loop(W.numpy(), spec.bits, spec.group_size, spec.sym, spec.int_zero)
    Q = rtn(W, spec)
    assert Q.dtype == W.dtype and Q.shape == W.shape and Q.is_contiguous()
    assert np.array_equal(Q.numpy().view(np.int32), Q_ref.view(np.int32)), (tuple(W.shape), str(spec))
    scale, zero = find_params(W, spec)
    assert np.array_equal(scale.numpy().view(np.int32), S_ref.view(np.int32))
    assert np.array_equal(zero.numpy().view(np.int32), Z_ref.view(np.int32))
    qt = quantize(W, spec)
    assert qt.codes.dtype == torch.uint8 and int(qt.codes.min()) >= 0 and int(qt.codes.max()) <= spec.maxq
    assert torch.equal(bits_of(dequantize(qt)), bits_of(Q)) and torch.equal(bits_of(qt.dequantize()), bits_of(Q))


@pytest.mark.parametrize("grid", list(KINDS))
@pytest.mark.parametrize("seed", range(6))
def test_groups_are_independent_and_scale_equivariant(seed, grid):
    W, spec = random_case(np.random.default_rng(100 + seed), grid)
    Q = rtn(W, spec)
    for a, b in group_bounds(W.shape[1], spec.group_size):  # each group quantized alone as a whole row
        assert torch.equal(Q[:, a:b], rtn(W[:, a:b].contiguous(), QuantSpec(spec.bits, None, spec.sym, spec.int_zero)))
    normal = lambda p: all(((t == 0) | (t.abs() >= 2**-14)).all() for t in p)  # fp16 normal numbers (or 0)
    for c in (0.25, 8.0):  # powers of two scale the grid exactly, while its fp16 statistics stay normal numbers
        if normal(find_params(W, spec)) and normal(find_params(W * c, spec)): assert torch.equal(rtn(W * c, spec), Q * c)


@pytest.mark.parametrize("grid", list(KINDS))
@pytest.mark.parametrize("seed", range(5))
def test_column_primitives_rebuild_rtn(seed, grid):
    "GPTQ's use: quantize one column at a time with the (d_row, 1) params of its group."
    W, spec = random_case(np.random.default_rng(200 + seed), grid)
    scale, zero = find_params(W, spec)
    g = W.shape[1] if spec.group_size is None else spec.group_size
    cols = []
    for j in range(W.shape[1]):
        s, z = scale[:, j // g, None], zero[:, j // g, None]
        mm = not spec.int_zero
        cols.append(dequantize_codes(quantize_codes(W[:, j:j+1], s, z, spec.maxq, mm), s, z, mm))
    assert torch.equal(torch.cat(cols, 1), rtn(W, spec))


@pytest.mark.parametrize("grid", list(KINDS))
@pytest.mark.parametrize("seed", range(6))
def test_error_bound_and_nearest_level(seed, grid):
    W, spec = random_case(np.random.default_rng(300 + seed), grid)
    qt, Q = quantize(W, spec), rtn(W, spec)
    g = W.shape[1] if spec.group_size is None else spec.group_size
    idx = torch.arange(W.shape[1]) // g
    s, z = qt.scale[:, idx], qt.zero[:, idx]
    levels = torch.arange(spec.maxq + 1.)
    levels = s[..., None] * levels + z[..., None] if grid == "minmax" else s[..., None] * (levels - z[..., None])
    lo, hi = levels[..., 0], levels[..., -1]
    # float32 rounding in steps (u = 2^-24), zeta = the zero in steps (min–max: |m|/s): w/s or (w-m)/s, + z, q - z, s*(q - z) or s*q + m
    zeta = (z / s).abs() if grid == "minmax" else z.abs()
    eps = (3 * zeta + 4 * (spec.maxq + 1)) * 2**-24
    ok = (W - Q).abs() <= s * (0.5 + eps)
    assert ok[(W >= lo) & (W <= hi)].all()
    if grid == "minmax":  # m <= min: nothing below code 0; the top level misses the max by at most maxq |s32 - fp16(s32)|,
        # half an fp16 spacing: 2^-11 s for a normal fp16 step, 2^-25 for a subnormal one
        assert (W >= lo).all() and (W - hi <= spec.maxq * torch.clamp(s * 2**-11, min=2**-25) + s * eps).all()
    nearest = (W[..., None] - levels).abs().min(-1).values
    assert ((W - Q).abs() - nearest).abs().le(eps * s).all()


def test_minmax_padding_sees_only_the_group():
    "The shorter last group's grid comes from its own weights (zero padding would widen it to 0)."
    W = torch.rand(4, 45) + 2
    mm, mm_row = QuantSpec(3, 16, int_zero=False), QuantSpec(3, None, int_zero=False)
    p, last = find_params(W, mm), find_params(W[:, 32:].contiguous(), mm_row)
    assert torch.equal(p.scale[:, 2:], last.scale) and torch.equal(p.zero[:, 2:], last.zero)
    assert torch.equal(rtn(W, mm)[:, 32:], rtn(W[:, 32:].contiguous(), mm_row))
    assert (p.zero > 0).all()  # code 0 stands for m > 0: the grid does not reach 0


def test_constant_groups_exact_on_minmax():
    W = torch.tensor([[0.25] * 5 + [-7.125] * 5, [0.] * 10])  # fp16 values
    mm = QuantSpec(2, 5, int_zero=False)
    s, m = find_params(W, mm)
    assert s.tolist() == [[1., 1.], [1., 1.]] and torch.equal(m, torch.tensor([[0.25, -7.125], [0., 0.]]))
    assert torch.equal(rtn(W, mm), W) and int(quantize(W, mm).codes.max()) == 0
    Wn = torch.tensor([[0.3] * 5 + [-7.1] * 5])  # no fp16 values: m is the fp16 just below, and a tiny step reaches w
    assert (rtn(Wn, mm) - Wn).abs().max() <= 2**-11 * 7.1 and (find_params(Wn, mm).zero < Wn[:, ::5]).all()


def test_no_negative_zero():
    "Integer zero 0 with small negative weights: codes 0 must stand for +0, as the uint8 codes of `quantize` do."
    W = torch.tensor([[-0.01, 10.0, -0.02, 5.0]])
    spec = QuantSpec(4, None)
    assert find_params(W, spec).zero.item() == 0
    Q = rtn(W, spec)
    assert not torch.signbit(Q[0, [0, 2]]).any() and torch.equal(bits_of(Q), bits_of(quantize(W, spec).dequantize()))
    assert not torch.signbit(quantize_codes(torch.tensor([-0.3]), torch.ones(1), torch.zeros(1), 15)).any()


@pytest.mark.parametrize("grid", ["int_zero", "minmax"])
def test_round_half_to_even(grid):
    W = torch.tensor([[-7., 8., 0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5]])  # 4-bit asym: s = 1, z = 7 exactly
    spec = QuantSpec(4, None, **KINDS[grid])
    # w/s + z = 7.5, 8.5, 9.5, 10.5, 6.5, 5.5, 4.5: ties go to the even code
    assert torch.equal(quantize(W, spec).codes, torch.tensor([[0, 15, 8, 8, 10, 10, 6, 6, 4]], dtype=torch.uint8))
    assert torch.equal(rtn(W, spec), torch.tensor([[-7., 8., 1., 1., 3., 3., -1., -1., -3.]]))


def test_hand_computed_params():
    W = torch.tensor([[-1., 2.], [0.5, 1.5], [0., 0.], [-3., 1.], [0.25, 1.75], [3., 3.]])
    f16 = lambda *v: torch.tensor(v).half().float()  # the stored (fp16) values
    s, m = find_params(W, QuantSpec(2, None, int_zero=False))  # min–max: own range; m = min (all fp16 here); constant rows s = 1
    assert torch.equal(s[:, 0], f16(1., 1/3, 1., 4/3, 0.5, 1.)) and torch.equal(m[:, 0], torch.tensor([-1., 0.5, 0., -3., 0.25, 3.]))
    s, z = find_params(W, QuantSpec(2, None))  # the default, GPTQ's: widened to 0, integer zero, zeros -> [-1, 1]
    assert torch.equal(s[:, 0], f16(1., 0.5, 2/3, 4/3, 1.75/3, 1.)) and z[:, 0].tolist() == [1., 0., 2., 2., 0., 0.]
    s, z = find_params(W, QuantSpec(2, None, sym=True))  # [-2,2], [0,1.5] (no negatives: xmin stays 0), zeros, [-3,3]
    assert torch.equal(s[:, 0], f16(4/3, 0.5, 2/3, 2., 1.75/3, 1.)) and z[:, 0].tolist() == [2.] * 6


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter warns when the fp16 cast overflows
def test_fp16_range():
    "Scales below fp16's smallest subnormal are stored as 2**-24; statistics beyond fp16's range are refused by name."
    W = torch.tensor([[1e-9, -3e-9, 2e-9, 0.]])
    for grid in KINDS.values():
        s, _ = find_params(W, QuantSpec(3, None, **grid))
        assert s.item() == 2**-24
    with pytest.raises(ValueError, match="lin: a group's scale .* beyond fp16's range"): rtn(torch.tensor([[0., 3e6]]), QuantSpec(4, None), name="lin")
    with pytest.raises(ValueError, match="lin: a group's minimum .* below fp16's range"):
        rtn(torch.tensor([[-7e4, -6e4]]), QuantSpec(4, None, int_zero=False), name='lin')
    with pytest.raises(ValueError, match="W: a group's scale"): rtn_triton(torch.tensor([[0., 3e6]], device=DEV), QuantSpec(4, None))


@pytest.mark.parametrize("shape,spec,expected", [
    ((576, 576), QuantSpec(4, 128), Fraction(576*4 + 5*(16+4), 576)),          # 4 groups of 128 + one of 64: 2404/576
    ((576, 576), QuantSpec(4, 128, int_zero=False), Fraction(576*4 + 5*(16+16), 576)),
    ((1536, 576), QuantSpec(3, 128), Fraction(576*3 + 5*(16+3), 576)),
    ((1536, 576), QuantSpec(3, 128, int_zero=False), Fraction(576*3 + 5*(16+16), 576)),
    ((576, 1536), QuantSpec(2, 64), Fraction(1536*2 + 24*(16+2), 1536)),
    ((576, 1536), QuantSpec(2, 64, int_zero=False), Fraction(1536*2 + 24*(16+16), 1536)),
    ((576, 576), QuantSpec(4, 128, sym=True), Fraction(576*4 + 5*16, 576)),
    ((7, 45), QuantSpec(3, 16), Fraction(45*3 + 3*(16+3), 45)),
    ((7, 45), QuantSpec(3, 16, int_zero=False), Fraction(45*3 + 3*(16+16), 45)),
    ((10, 33), QuantSpec(8, None), Fraction(33*8 + 16 + 8, 33)),
    ((10, 33), QuantSpec(8, None, int_zero=False), Fraction(33*8 + 16 + 16, 33)),
    ((3, 5), QuantSpec(2, 1), Fraction(5*2 + 5*(16+2), 5)),
    ((3, 5), QuantSpec(2, 1, int_zero=False), Fraction(5*2 + 5*(16+16), 5)),
    ((3, 5), QuantSpec(2, 100), Fraction(5*2 + 16 + 2, 5)),
    ((3, 5), QuantSpec(2, 100, sym=True), Fraction(5*2 + 16, 5)),
])
def test_bits_per_weight_exact(shape, spec, expected):
    assert storage_bits(shape, spec) == shape[0] * expected.numerator * (shape[1] // expected.denominator)
    assert bits_per_weight(shape, spec) == float(expected)
    assert bits_per_weight(shape, spec, scale_bits=32, zero_bits=0) == float(Fraction(
        shape[0] * shape[1] * spec.bits + shape[0] * num_groups(shape[1], spec.group_size) * 32, shape[0] * shape[1]))


def test_bits_per_weight_q4_1_is_five():
    assert bits_per_weight((576, 576), QuantSpec(4, 32, int_zero=False)) == 5.0  # the min–max grid's fp16 zero, like Q4_1's fp16 offset
    assert bits_per_weight((576, 576), QuantSpec(4, 32, int_zero=False), zero_bits=4) == 4.625
    assert bits_per_weight((576, 576), QuantSpec(4, 32)) == 4.625  # the default integer zero: 4 bits
    assert storage_bits((576, 576), QuantSpec(4, 128)) == 576 * 2404
    assert storage_bits((576, 576), QuantSpec(4, 128, int_zero=False)) == 576 * 2464


@pytest.mark.parametrize("kw,match", [(dict(bits=1), "bits"), (dict(bits=9), "bits"), (dict(bits=4.0), "bits"),
                                      (dict(bits="4"), "bits"), (dict(bits=True), "bits"), (dict(group_size=0), "group_size"),
                                      (dict(group_size=-8), "group_size"), (dict(group_size=1.5), "group_size"),
                                      (dict(sym=1), "sym"), (dict(int_zero=1), "int_zero"),
                                      (dict(sym=True, int_zero=False), r"the min–max grid \(int_zero=False\) is asymmetric: use sym=False")])
def test_quantspec_rejects(kw, match):
    with pytest.raises(ValueError, match=match): QuantSpec(**kw)


def test_quantspec_basics():
    assert QuantSpec().maxq == 15 and str(QuantSpec()) == "w4g128a" and str(QuantSpec(3, None, True)) == "w3g-1s"
    assert str(QuantSpec(4, 128, int_zero=False)) == "w4g128m" and str(QuantSpec(4, 128, sym=True)) == "w4g128s"
    assert str(QuantSpec(4, 128, int_zero=True)) == "w4g128a" and str(QuantSpec(2, 16, sym=True, int_zero=True)) == "w2g16s"
    assert QuantSpec().int_zero and QuantSpec(sym=True).int_zero and not QuantSpec(4, 128, False, False).int_zero
    assert QuantSpec(4, 128, False, True) == QuantSpec() and QuantSpec(4, 128, True) == QuantSpec(4, 128, True, True)
    assert QuantSpec(4, 128) == QuantSpec(np.int64(4), np.int64(128))
    with pytest.raises(Exception): QuantSpec().bits = 3  # frozen


@pytest.mark.parametrize("fn", [rtn, quantize, find_params, rtn_triton])
@pytest.mark.parametrize("W,match", [
    (torch.tensor([[1., float("nan")]]), "NaN"), (torch.tensor([[float("inf"), 1.]]), "Inf"),
    (torch.ones(3), "2-D"), (torch.ones(2, 2, 2), "2-D"), (torch.ones(2, 3, dtype=torch.int64), "floating"),
    (torch.ones(0, 3), "empty"), (np.ones((2, 2)), "torch.Tensor")])
def test_bad_weights(fn, W, match):
    with pytest.raises(ValueError, match=match): fn(W, QuantSpec())


@pytest.mark.parametrize("shape,match", [((4,), "shape"), ((0, 4), "d_row"), ((4, 0), "d_col"), ((4, 2.5), "d_col")])
def test_bits_bad_shape(shape, match):
    with pytest.raises(ValueError, match=match): bits_per_weight(shape, QuantSpec())


def test_quantized_tensor_checks_shapes():
    c = torch.zeros(2, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="zero shape"): QuantizedTensor(c, torch.ones(2, 2), torch.ones(2, 1), QuantSpec(4, 2), (2, 3))
    with pytest.raises(ValueError, match="codes shape"): QuantizedTensor(c, torch.ones(2, 1), torch.ones(2, 1), QuantSpec(4, 2), (3, 2))


def test_dtypes_preserved():
    W = torch.randn(6, 40)
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        Q = rtn(W.to(dt), QuantSpec(3, 16))
        assert Q.dtype == dt
        if dt != torch.float64: assert torch.equal(Q.float(), rtn(W.to(dt).float(), QuantSpec(3, 16)).to(dt).float())
        assert quantize(W.to(dt), QuantSpec(3, 16)).dequantize().dtype == dt


@pytest.mark.parametrize("grid", list(KINDS))
@pytest.mark.parametrize("seed", range(4))
def test_triton_kernel_bit_exact(seed, grid):
    "Fused kernel equals its torch spec on random odd shapes (interpreted on CPU, so shapes stay small)."
    rng = np.random.default_rng(400 + seed)
    W, spec = random_case(rng, grid)
    W = W[:8, :200].contiguous()
    dt = [torch.float32, torch.float16, torch.bfloat16, torch.float64][seed % 4]
    W = W.to(DEV, dt)
    Q, (S, Z) = rtn_triton(W, spec, return_params=True)
    assert torch.equal(bits_of(Q), bits_of(rtn(W, spec))), (tuple(W.shape), str(spec), dt)
    ps = find_params(W, spec)
    assert torch.equal(bits_of(S), bits_of(ps.scale)) and torch.equal(bits_of(Z), bits_of(ps.zero))


def test_triton_rejects_noncontiguous():
    with pytest.raises(ValueError, match="contiguous"): rtn_triton(torch.randn(8, 6, device=DEV).t(), QuantSpec(4, 2))


def test_no_autograd_graph():
    W = torch.nn.Parameter(torch.randn(3, 20))
    assert not rtn(W, QuantSpec(4, 8)).requires_grad and not find_params(W, QuantSpec(4, 8)).scale.requires_grad
    assert torch.equal(rtn(W, QuantSpec(4, 8)), rtn(W.detach(), QuantSpec(4, 8)))
