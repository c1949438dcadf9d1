"Hessian providers (sensq.hessian) and OAC end to end (sensq.oac) on tiny Llama fixtures."
import logging, math, os
os.environ.setdefault('TRITON_INTERPRET', '1'); os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
import pytest, torch
import torch.nn.functional as F
from sensq.models import tiny_llama, get_blocks, block_linear_layers
from sensq.quant import QuantSpec, rtn
from sensq.eval import lm_loss
from sensq.hessian import (LayerHessian, OACHessian, capture_block_inputs, run_block, layer_hessians, oac_hessians,
                           inverse_cholesky, damp_hessian, loss_from_block)

def _calib(n=3, s=16, vocab=256, seed=0):
    return torch.randint(0, vocab, (n, s), generator=torch.Generator().manual_seed(seed))

def _explicit_oac(model, calib, b):
    "Each sequence's gradient of its own mean CE over the whole model, computed separately; Σ GᵀG / n."
    lins = block_linear_layers(get_blocks(model)[b])
    acc = {k: torch.zeros(l.in_features, l.in_features) for k, l in lins.items()}
    for n in range(len(calib)):
        model.zero_grad(set_to_none=True)
        ids = calib[n:n+1]
        logits = model(ids, use_cache=False).logits[:, :-1]
        F.cross_entropy(logits.transpose(1, 2), ids[:, 1:]).backward()
        for k, l in lins.items():
            G = l.weight.grad.reshape(l.out_features, l.in_features).clone()
            acc[k] += G.T @ G
    model.zero_grad(set_to_none=True)
    return {k: v / len(calib) for k, v in acc.items()}

@pytest.mark.parametrize('attn', ['eager', 'sdpa'])
def test_oac_per_sample_equals_explicit(attn):
    model = tiny_llama(n_layers=2, attn_implementation=attn, seed=1)
    calib = _calib(3, 16)
    inp = capture_block_inputs(model, calib)
    h = inp.hidden
    for b, block in enumerate(get_blocks(model)):
        ref = _explicit_oac(model, calib, b)
        for bs in (1, 2):
            got = oac_hessians(model, b, h, inp.kwargs, calib, batch_size=bs)
            assert list(got) == list(ref)
            for k in ref: torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4 * ref[k].abs().max().item())
        h = run_block(block, h, inp.kwargs)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())

def test_layer_hessian_equals_explicit():
    model = tiny_llama(n_layers=2)
    calib = _calib(4, 20)
    inp = capture_block_inputs(model, calib)
    block = get_blocks(model)[0]
    seen = {}
    hooks = [l.register_forward_hook(lambda m, a, o, k=k: seen.setdefault(k, []).append(a[0].reshape(-1, a[0].shape[-1])))
             for k, l in block_linear_layers(block).items()]
    run_block(block, inp.hidden, inp.kwargs, batch_size=4)
    for hk in hooks: hk.remove()
    Hs = layer_hessians(block, inp.hidden, inp.kwargs, batch_size=3)
    for k, xs in seen.items():
        X = torch.cat(xs)
        assert X.shape[0] == 4 * 20
        torch.testing.assert_close(Hs[k], 2 * X.T @ X / len(X), rtol=1e-5, atol=1e-5 * Hs[k].abs().max().item())
    # the provider alone, uneven chunks
    X = torch.randn(50, 7, dtype=torch.float64)
    lh = LayerHessian(7)
    for c in (X[:1], X[1:33], X[33:]): lh.update(c)
    torch.testing.assert_close(lh.finalize(), (2 * X.T @ X / 50).float(), rtol=1e-5, atol=1e-6)

def test_sequential_capture_consistent():
    model = tiny_llama(n_layers=3, attn_implementation='sdpa')
    calib = _calib(3, 12)
    inp = capture_block_inputs(model, calib)
    with torch.no_grad(): ref = model(calib, output_hidden_states=True, use_cache=False).hidden_states
    h = inp.hidden
    for b, block in enumerate(get_blocks(model)):
        torch.testing.assert_close(h, ref[b], rtol=1e-5, atol=1e-5)
        h = run_block(block, h, inp.kwargs, batch_size=2)
    # sequential mode: quantize block 0, then block 1's inputs are the quantized block's outputs
    with torch.no_grad():
        for l in block_linear_layers(get_blocks(model)[0]).values(): l.weight.copy_(rtn(l.weight, QuantSpec(2, 16)))
        ref_q = model(calib, output_hidden_states=True, use_cache=False).hidden_states
    torch.testing.assert_close(run_block(get_blocks(model)[0], inp.hidden, inp.kwargs), ref_q[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ref_q[1], ref[1])

def test_loss_from_block_matches_lm_loss():
    model = tiny_llama(n_layers=2)
    calib = _calib(3, 16)
    inp = capture_block_inputs(model, calib)
    h1 = run_block(get_blocks(model)[0], inp.hidden, inp.kwargs)
    with torch.no_grad():
        torch.testing.assert_close(loss_from_block(model, 1, h1, inp.kwargs, calib).mean(), lm_loss(model, calib), rtol=1e-5, atol=1e-6)

def test_singular_hessian_and_damping_retry(caplog):
    H = torch.zeros(5, 5)                                  # every input dead: exactly singular
    ic = inverse_cholesky(H)
    assert ic.retries == 0 and ic.dead.all() and torch.isfinite(ic.U).all()
    A = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    ic = inverse_cholesky(A.T @ A)                         # rank 3 of 6, exactly singular but no dead input
    assert ic.retries == 0 and not ic.dead.any()
    Hbad = A.T @ A - 0.5 * torch.eye(6)                    # indefinite: needs more damping
    with caplog.at_level(logging.WARNING, logger='sensq.hessian'):
        ic = inverse_cholesky(Hbad, name='bad')
    assert ic.retries >= 1 and ic.percdamp > 0.01
    assert sum('bad: Cholesky factorisation failed' in r.getMessage() for r in caplog.records) == ic.retries
    Hd = damp_hessian(Hbad, ic.percdamp)
    assert torch.linalg.eigvalsh(Hd)[0] > 0
    torch.testing.assert_close(ic.U.T @ ic.U, torch.linalg.inv(Hd), rtol=1e-3, atol=1e-3)

def test_bad_inputs():
    model = tiny_llama(n_layers=2)
    calib = _calib(2, 8)
    inp = capture_block_inputs(model, calib)
    with pytest.raises(ValueError, match='integer tensor'): capture_block_inputs(model, torch.randn(2, 8))
    with pytest.raises(ValueError, match='out of range'): oac_hessians(model, 2, inp.hidden, inp.kwargs, calib)
    with pytest.raises(ValueError, match='disagree'): oac_hessians(model, 0, inp.hidden, inp.kwargs, calib[:1])
    with pytest.raises(ValueError, match='unknown layer'): layer_hessians(get_blocks(model)[0], inp.hidden, inp.kwargs, names=['x'])
    with pytest.raises(ValueError, match='square'): inverse_cholesky(torch.zeros(2, 3))
    with pytest.raises(ValueError, match='non-finite'): inverse_cholesky(torch.full((2, 2), float('nan')))
    with pytest.raises(ValueError, match='expected d_col'): LayerHessian(3).update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match='d_col'): OACHessian(3).update(torch.zeros(2, 4))

def _trained_tiny(steps=200, seed=0):
    "Tiny Llama trained on the default calibration text (bytes) so that quantization visibly moves its loss."
    from sensq.data import byte_tokenizer, load_text, tokenize_text
    tok = byte_tokenizer()
    tr = tokenize_text(tok, load_text('default', 'calib'))
    m = tiny_llama(n_layers=2, seed=seed).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, len(tr) - 65, (16,), generator=g).tolist()
        loss = lm_loss(m, torch.stack([tr[j:j+64] for j in i])); opt.zero_grad(); loss.backward(); opt.step()
    return m.eval(), tr, tokenize_text(tok, load_text('default', 'eval'))

def _identity_hessians(model, b, hidden, kwargs, input_ids, names):
    lins = block_linear_layers(get_blocks(model)[b])
    return {n: torch.eye(lins[n].in_features) for n in names}


def test_oac_lowers_its_objective_below_rtn_at_equal_bits():
    """What OAC optimises, checked where the margin is large on every CPU: on each layer of block 0, GPTQ's loop driven by
    the output-adaptive Hessian Ĥ (tau=inf, no act-order) against RTN on the same SpQR grid with the same second-level
    statistics (an identity Hessian: no error feedback) -- identical bits. The ratio of tr(ΔW Ĥ ΔWᵀ), random tiny
    Llamas, seeds 0-4, 2 bits: 0.275-0.812 over all 35 layers, the same under ATEN_CPU_CAPABILITY=default and avx2
    (1 thread). Asserted: < 0.9 on every layer. (End to end, on a tiny model trained for 200 steps, the share of RTN's
    loss increase OAC removes swings with the CPU's kernels -- 13% to 82% between seeds and capabilities -- so no
    end-to-end ranking is asserted; 22_oac prints it, 23_hessian_study measures it on the real model.)"""
    from sensq.spqr import spqr_quantize
    spec = QuantSpec(2, 16, int_zero=False)
    for seed in range(5):
        m = tiny_llama(n_layers=2, seed=seed)
        calib = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(seed + 1))
        inp = capture_block_inputs(m, calib)
        Hs = oac_hessians(m, 0, inp.hidden, inp.kwargs, calib)
        for n, l in block_linear_layers(get_blocks(m)[0]).items():
            W, H = l.weight.data, Hs[n].double()
            obj = lambda Q: float(torch.trace((W.double() - Q.double()) @ H @ (W.double() - Q.double()).T))
            r_oac = spqr_quantize(W, Hs[n], spec, tau=math.inf, act_order=False)
            r_rtn = spqr_quantize(W, torch.eye(W.shape[1]), spec, tau=math.inf, act_order=False)
            assert r_oac.packed().nbytes() == r_rtn.packed().nbytes(), n
            assert obj(r_oac.Q) < 0.9 * obj(r_rtn.Q), (seed, n, obj(r_oac.Q) / obj(r_rtn.Q))


def test_oac_model_level_bits_match_rtn_on_the_same_grid():
    "OAC's driver (tau=inf, no act-order) and RTN on SpQR's grid store the same bytes: a hand count per block."
    from sensq.oac import oac_quantize_model
    from sensq.spqr import spqr_quantize_model
    calib = _calib(8, 32)
    spec = QuantSpec(2, 16, int_zero=False)
    r, o = tiny_llama(n_layers=2, seed=0), tiny_llama(n_layers=2, seed=0)
    s_rtn = spqr_quantize_model(r, calib, spec, progress=False, tau=math.inf, hessian_fn=_identity_hessians, act_order=False)
    s_oac = oac_quantize_model(o, calib, spec, progress=False, tau=math.inf, act_order=False)
    # bytes by hand per block (N x K layer, G = K/16 groups, N/16 row groups): 2-bit codes in int32 words per row,
    # 3-bit second-level scale and zero codes in int32 words per row, four fp16 (N/16, G) second-level statistics:
    #   q, o 64x64: 64·16 + 2·64·4 + 4·2·4·4 = 1664;  k, v 32x64: 832;  gate, up 128x64: 3328;  down 64x128: 2816
    # block: 2·1664 + 2·832 + 2·3328 + 2816 = 14464 bytes for 36864 weights
    assert s_oac['bits_per_weight'] == s_rtn['bits_per_weight'] == 8 * 14464 / 36864
    assert s_oac['method'] == 'oac' and s_oac['n_layers'] == 14 and s_oac['hessian_block_passes'] == 8 * 3
    assert all(math.isfinite(p.float().sum().item()) for p in o.parameters())


def test_oac_passes_spqr_parameters_and_refuses_others():
    "Every SpQR parameter `oac_quantize_model` advertises reaches `spqr_quantize`; an unknown one (e.g. round_zero) is refused."
    import math, re, inspect
    from sensq.oac import oac_quantize_model
    from sensq.spqr import spqr_quantize
    src = inspect.getsource(oac_quantize_model)
    advertised = re.search(r"\*\*spqr_params, # (.*)", src).group(1).split(', ')
    assert set(advertised) <= set(inspect.signature(spqr_quantize).parameters)
    calib = _calib(2, 8)
    kw = dict(blocksize=16, percdamp=0.5, act_order=False, qq_scale_bits=4, qq_zero_bits=None, qq_groupsize=8,
              simplified_outliers=True, outlier_dtype=torch.float32)
    assert set(kw) == set(advertised)
    st = oac_quantize_model(tiny_llama(n_layers=1), calib, QuantSpec(3, 16, int_zero=False), progress=False,
                            layers=['model.layers.0.mlp.down_proj'], tau=math.inf, **kw)
    assert st['params'] == kw and st['n_layers'] == 1
    with pytest.raises(ValueError, match="unknown SpQR parameter.*round_zero"):
        oac_quantize_model(tiny_llama(n_layers=1), calib, QuantSpec(3, 16, int_zero=False), progress=False, round_zero=True)
