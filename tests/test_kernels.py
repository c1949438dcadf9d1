"Interpreter tests of sensq.kernels against the float64 spec: every width x grid x group layout x path, sparse part, bad input."
import os
if not __import__('torch').cuda.is_available(): os.environ.setdefault("TRITON_INTERPRET", "1")
import pytest
import torch
from sensq.pack import PackedWeight, pack_codes, unpack_codes
from sensq.kernels import (packed_linear, packed_linear_reference, random_packed, kernel_weight, kernel_unsupported, KernelWeight,
                           INTERPRETER_CONFIGS, GPU_CONFIGS, _plan, _cfg, _LOCKS, check_packed_linear)

DEV = 'cuda' if torch.cuda.is_available() else 'cpu'
FMA, DOT = INTERPRETER_CONFIGS['gemv1'][0], INTERPRETER_CONFIGS['gemv16'][0]
SEED = int.from_bytes(os.urandom(4), 'little')   # fresh inputs every run; the seed is in every failure message


def check(pw, M, cfg, dtype=torch.float32, bias=True, sparse='fused', gen=None):
    """Kernel vs float64 spec on random x drawn from `gen` (`sensq.kernels.check_packed_linear`: element by element, a
    NaN-filled output buffer, tolerance from output rounding, float32 accumulation and the tensor-core input rounding)."""
    try: check_packed_linear(pw, M, cfg, dtype, bias, sparse, seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
    except AssertionError as e: raise AssertionError(f"{e} (test seed {SEED})") from None


def layouts(bits, grid, gen):
    "(packed weight, note) on 70 columns: ragged groups of 32, one group per row, act-order, groups of 7 (no tile divides)."
    if grid == 'codebook':
        return [random_packed(17, 70, bits, grid, None, generator=gen)]
    return [random_packed(17, 70, bits, grid, 32, generator=gen), random_packed(17, 70, bits, grid, None, generator=gen),
            random_packed(17, 70, bits, grid, 32, act_order=True, generator=gen), random_packed(17, 70, bits, grid, 7, generator=gen)]


@pytest.mark.parametrize('grid', ['asym', 'sym', 'minmax', 'codebook'])
@pytest.mark.parametrize('bits', [1, 2, 3, 4, 8])
def test_width_grid_layout_path(bits, grid):
    gen = torch.Generator().manual_seed(SEED + 97 * bits + len(grid))
    for pw in layouts(bits, grid, gen):
        pw = PackedWeight(pw.config, {k: v.to(DEV) for k, v in pw.tensors.items()})
        check(pw, 1, FMA, gen=gen)
        check(pw, 5, dict(DOT, SPLIT_K=2), gen=gen)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    gen = torch.Generator().manual_seed(SEED)
    for pw in (random_packed(33, 96, 4, 'asym', 32, generator=gen), random_packed(33, 96, 3, 'codebook', None, generator=gen),
               random_packed(33, 96, 2, 'minmax', 32, act_order=True, generator=gen)):
        pw = PackedWeight(pw.config, {k: v.to(DEV) for k, v in pw.tensors.items()})
        for M, cfg in ((1, FMA), (16, DOT), (3, dict(FMA, SPLIT_K=2))):
            check(pw, M, cfg, dtype=dtype, gen=gen)


def sparse_weight(gen, col_dtype, K=70):
    "A 4-bit weight with a sparse part holding an empty row and a row with many entries."
    pw = random_packed(19, K, 4, 'asym', 32, generator=gen)
    S = torch.rand(19, K, generator=gen) < 0.05
    S[0] = torch.rand(K, generator=gen) < 0.9
    S[1] = False
    cols = S.nonzero()[:, 1]
    crow = torch.zeros(20, dtype=torch.int32); crow[1:] = S.sum(1).cumsum(0)
    col = (torch.where(cols >= 32768, cols - 65536, cols) if col_dtype == torch.int16 else cols).to(col_dtype)
    t = dict(pw.tensors, sparse_crow=crow, sparse_col=col, sparse_val=torch.randn(cols.numel(), generator=gen).half())
    return PackedWeight(pw.config, {k: v.to(DEV) for k, v in t.items()})


@pytest.mark.parametrize('col_dtype', [torch.int16, torch.int32])
@pytest.mark.parametrize('sparse', ['fused', 'separate'])
def test_sparse_part(col_dtype, sparse):
    gen = torch.Generator().manual_seed(SEED + 5)
    pw = sparse_weight(gen, col_dtype)
    for M, cfg in ((1, FMA), (3, dict(DOT, SPLIT_K=3)), (1, dict(FMA, SPLIT_K=2))):
        check(pw, M, cfg, sparse=sparse, gen=gen)


def test_sparse_columns_beyond_int16():
    "Columns >= 32768 are stored as negative int16 bit patterns and read back as unsigned."
    gen = torch.Generator().manual_seed(SEED + 6)
    pw = random_packed(3, 40000, 4, 'sym', None, density=0.002, generator=gen)
    assert bool((pw.tensors['sparse_col'] < 0).any())
    pw = PackedWeight(pw.config, {k: v.to(DEV) for k, v in pw.tensors.items()})
    for sparse in ('fused', 'separate'):
        check(pw, 1, dict(FMA, BLOCK_K=4096), sparse=sparse, gen=gen)


def test_default_buckets_and_leading_dims():
    "No config: batch 1, 2-16 and the GEMM bucket through the launcher's own choice; leading dimensions flattened."
    gen = torch.Generator().manual_seed(SEED + 7)
    pw = random_packed(40, 64, 4, 'asym', 32, density=0.05, generator=gen)
    pw = PackedWeight(pw.config, {k: v.to(DEV) for k, v in pw.tensors.items()})
    for M in (1, 7, 33):
        check(pw, M, None, gen=gen)
    x = torch.randn(2, 3, 64, generator=gen).to(DEV)
    torch.testing.assert_close(packed_linear(x, pw), packed_linear_reference(x, pw), rtol=1e-5, atol=1e-5)


def test_split_k_counters_return_to_zero():
    gen = torch.Generator().manual_seed(SEED + 8)
    pw = random_packed(40, 200, 4, 'sym', 32, generator=gen)
    pw = PackedWeight(pw.config, {k: v.to(DEV) for k, v in pw.tensors.items()})
    for _ in range(2):
        check(pw, 1, dict(FMA, SPLIT_K=4), gen=gen)
    assert all(int(b.abs().sum()) == 0 for b in _LOCKS.values())


def test_plan():
    kw = lambda gs, K, G, grid='asym', gidx=None: KernelWeight(4, grid, gs, 4096, K, G, torch.empty(0, dtype=torch.int32), None, None, gidx,
                                                              None, None, None, None)
    p = _plan(GPU_CONFIGS['gemv1'][0], kw(128, 4096, 32), 1, sms=132)
    assert (p['SPLIT_K'], p['K_SPLIT'], p['BLOCK_K'], p['PER_ELEM']) == (8, 512, 128, False)
    assert _plan(GPU_CONFIGS['gemv1'][0], kw(128, 14336, 112), 1, sms=132)['SPLIT_K'] == 16  # 32 tiles x 16 splits of 7 K tiles
    assert _plan(_cfg(1, 128, 128, False), kw(64, 4096, 64), 1)['BLOCK_K'] == 64              # fold path kept for g64
    assert _plan(_cfg(16, 128, 128, True), kw(128, 4096, 32, gidx=torch.zeros(1)), 16)['PER_ELEM']
    assert _plan(_cfg(16, 128, 128, True), kw(128, 4096, 32, gidx=torch.zeros(1)), 16)['BLOCK_N'] == 64   # gather path: smaller tile
    with pytest.raises(ValueError, match='multiple of 32'): _plan(_cfg(1, 64, 48, False), kw(128, 4096, 32), 1)
    with pytest.raises(ValueError, match='BLOCK_M, BLOCK_N >= 16'): _plan(_cfg(8, 64, 64, True), kw(128, 4096, 32), 8)


def test_bad_input():
    gen = torch.Generator().manual_seed(0)
    pw = random_packed(8, 40, 4, 'asym', 8, generator=gen)
    x = torch.randn(2, 40)
    with pytest.raises(ValueError, match='39 input features, the weight 40'): packed_linear(x[:, :39], pw)
    with pytest.raises(ValueError, match='float16/bfloat16/float32'): packed_linear(x.long(), pw)
    with pytest.raises(ValueError, match='bias must be'): packed_linear(x, pw, torch.zeros(7))
    with pytest.raises(ValueError, match="'fused' or 'separate'"): packed_linear(x, pw, sparse='no')
    with pytest.raises(ValueError, match='out must be'): packed_linear(x, pw, out=torch.empty(2, 8, dtype=torch.float16))
    for bits in (5, 6, 7):
        assert 'not implemented in the kernels' in kernel_unsupported(random_packed(2, 40, bits, 'sym', None))
        with pytest.raises(ValueError, match=f'{bits}-bit codes'): packed_linear(x, random_packed(2, 40, bits, 'sym', None))
    bad = PackedWeight(pw.config, dict(pw.tensors, qweight=pw.tensors['qweight'][:, :-1]))
    with pytest.raises(ValueError, match='`qweight` must have shape'): kernel_weight(bad)
    bad = PackedWeight(pw.config, dict(pw.tensors, scales=pw.tensors['scales'].int()))
    with pytest.raises(ValueError, match='`scales` must be'): kernel_weight(bad)
    g = random_packed(8, 40, 4, 'sym', 8, act_order=True, generator=gen)
    g.tensors['g_idx'][0] = -1
    with pytest.raises(ValueError, match='g_idx values'): kernel_weight(g)
    s = random_packed(8, 40, 4, 'sym', 8, density=0.2, generator=gen)
    s.tensors['sparse_col'][0] = 45
    with pytest.raises(ValueError, match='beyond in_features'): kernel_weight(s)
    s = random_packed(8, 40, 4, 'sym', 8, density=0.2, generator=gen)
    s.tensors['sparse_crow'][-1] += 1
    with pytest.raises(ValueError, match='sparse_crow must rise'): kernel_weight(s)


def test_cached_kernel_weight_follows_tensor_replacement():
    gen = torch.Generator().manual_seed(SEED + 9)
    pw = random_packed(8, 64, 4, 'sym', 32, generator=gen)
    x = torch.randn(1, 64, generator=gen)
    y0 = packed_linear(x, pw)
    pw.tensors['scales'] = pw.tensors['scales'] * 2
    torch.testing.assert_close(packed_linear(x, pw), 2 * y0, rtol=1e-6, atol=1e-6)
