"Sensitivity metrics and PQI: closed forms, convergence, chunking, resumption, the Triton step, the report and the CLI."
import json, os
os.environ.setdefault('TRITON_INTERPRET', '1')
from pathlib import Path
import pytest, torch
from sensq.quant import QuantSpec
from sensq.models import tiny_llama, linear_layers
from sensq.taylor import (weight_deltas, actual_delta, loss_gradient, hvp, taylor_scores, shifted_weights,
                          quadratic_fixture, mse_loss, predicted_delta, fisher_diagonal, input_hessians, obs_scores)
from sensq.pqi import pqi, quadrature, pqi_step_torch, pqi_step_triton
from sensq.sensitivity import sensitivity_report, sensq_sensitivity, METRICS

torch.set_num_threads(1)

def sharp_llama(seed=0):
    "Tiny random Llama with weights at std 0.12: quantization moves its loss far above fp32 rounding."
    m = tiny_llama(seed=seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2: p.mul_(6)
    return m

@pytest.fixture(scope='module')
def llama():
    m = sharp_llama()
    calib = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(1))
    dW = weight_deltas(m, QuantSpec(bits=3, group_size=32))
    return m, calib, dW

def flat(d): return torch.cat([v.flatten() for v in d.values()])
def rel(a, b): return abs(a - b) / abs(b)

def test_quadratic_second_order_taylor_and_midpoint_pqi_are_exact():
    for seed in range(3):
        m, data, dW = quadratic_fixture(seed=seed)
        dF = actual_delta(m, data, dW, loss_fn=mse_loss)
        ts = taylor_scores(m, data, dW, loss_fn=mse_loss, progress=False)
        assert rel(predicted_delta(ts['first']) + predicted_delta(ts['second']), dF) < 1e-5
        for N in (1, 3, 8):
            for rule in ('midpoint', 'trapezoid'):
                r = pqi(m, data, dW, N=N, rule=rule, batch_size=6, loss_fn=mse_loss, progress=False)
                assert rel(r.total, dF) < 1e-5
                exact = flat(ts['first']) + flat(ts['second'])
                assert (flat(r.scores) - exact).abs().max() < 1e-5 * exact.abs().max()
        # first order alone is not exact, nor is the left rule
        assert rel(predicted_delta(ts['first']), dF) > 1e-3
        assert rel(pqi(m, data, dW, N=4, rule='left', loss_fn=mse_loss, progress=False).total, dF) > 1e-4

def test_pqi_sums_to_actual_and_converges_on_tiny_llama(llama):
    m, calib, dW = llama
    W0 = {n: linear_layers(m)[n].weight.detach().clone() for n in dW}
    dF = actual_delta(m, calib, dW)
    errs = {N: rel(pqi(m, calib, dW, N=N, progress=False).total, dF) for N in (2, 4, 8, 32)}
    assert errs[32] < 0.01, errs
    assert errs[2] > errs[4] > errs[8] > errs[32], errs
    # midpoint error is O(1/N^2): a quarter per doubling of N, until fp32 noise
    assert errs[4] < 0.4 * errs[2]
    assert all(torch.equal(W0[n], linear_layers(m)[n].weight) for n in dW)
    for rule in ('left', 'trapezoid'):
        assert rel(pqi(m, calib, dW, N=32, rule=rule, progress=False).total, dF) < 0.01

def test_hvp_matches_finite_differences(llama):
    m, calib, dW = llama
    names = list(dW)
    _, Hv = hvp(m, calib, dW, batch_size=3, progress=False)
    eps = 1e-2
    with shifted_weights(m, dW, eps): gp = loss_gradient(m, calib, names, progress=False)
    with shifted_weights(m, dW, -eps): gm = loss_gradient(m, calib, names, progress=False)
    fd = (flat(gp) - flat(gm)) / (2 * eps)
    assert ((fd - flat(Hv)).norm() / flat(Hv).norm()) < 0.02
    # a wrong direction is far off: H·(2Δw) ≠ H·Δw
    assert ((2 * fd - flat(Hv)).norm() / flat(Hv).norm()) > 0.5

def test_hvp_switches_sdpa_model_to_eager_and_back():
    m = tiny_llama(seed=2, attn_implementation='sdpa')
    calib = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    dW = weight_deltas(m, QuantSpec(bits=3, group_size=32))
    ref = tiny_llama(seed=2, attn_implementation='eager')
    _, Hv = hvp(m, calib, dW, progress=False)
    _, Hv_ref = hvp(ref, calib, dW, progress=False)
    assert m.config._attn_implementation == 'sdpa'
    assert (flat(Hv) - flat(Hv_ref)).abs().max() < 1e-5 * flat(Hv_ref).abs().max()

def test_chunked_windows_equal_one_pass(llama):
    m, calib, dW = llama
    a = pqi(m, calib, dW, N=4, batch_size=4, progress=False)
    b = pqi(m, calib, dW, N=4, batch_size=1, progress=False)
    c = pqi(m, calib, dW, N=4, batch_size=3, progress=False)
    for x in (b, c): assert (flat(x.scores) - flat(a.scores)).abs().max() < 1e-5 * flat(a.scores).abs().max()
    g1, h1 = hvp(m, calib, dW, batch_size=4, progress=False)
    g2, h2 = hvp(m, calib, dW, batch_size=1, progress=False)
    assert (flat(h1) - flat(h2)).abs().max() < 1e-5 * flat(h1).abs().max()
    assert (flat(g1) - flat(g2)).abs().max() < 1e-5 * flat(g1).abs().max()

@pytest.mark.parametrize('k', [1, 5, 8])
def test_resumed_equals_uninterrupted_after_k_steps(llama, tmp_path, k):
    m, calib, dW = llama
    full = pqi(m, calib, dW, N=4, rule='trapezoid', progress=False)
    ck = tmp_path / 'pqi.pt'
    part = pqi(m, calib, dW, N=4, rule='trapezoid', checkpoint=ck, checkpoint_every=1, max_steps=k, progress=False)
    assert not part.complete and part.steps_done == k and ck.exists()
    res = pqi(m, calib, dW, N=4, rule='trapezoid', checkpoint=ck, checkpoint_every=1, progress=False)
    assert res.complete and res.steps_done == full.total_steps
    assert all(torch.equal(res.scores[n], full.scores[n]) for n in dW)
    assert torch.equal(res.trace, full.trace)

def test_resume_after_a_crash(llama, tmp_path):
    "A loss that raises mid-run (a crash) leaves the weights restored and a checkpoint to resume from."
    m, calib, dW = llama
    W0 = {n: linear_layers(m)[n].weight.detach().clone() for n in dW}
    full = pqi(m, calib, dW, N=3, progress=False)
    from sensq.eval import lm_loss
    calls = []
    def crashing(model, ids):
        calls.append(1)
        if len(calls) == 7: raise KeyboardInterrupt
        return lm_loss(model, ids)
    ck = tmp_path / 'run.pt'
    with pytest.raises(KeyboardInterrupt): pqi(m, calib, dW, N=3, loss_fn=crashing, checkpoint=ck, progress=False)
    assert all(torch.equal(W0[n], linear_layers(m)[n].weight) for n in dW)
    state = torch.load(ck, weights_only=True)
    assert state['step'] == 4   # checkpoints once per point (4 windows): the crash at step 7 loses steps 5-6
    res = pqi(m, calib, dW, N=3, checkpoint=ck, progress=False)
    assert all(torch.equal(res.scores[n], full.scores[n]) for n in dW)

def test_checkpoint_of_another_run_is_refused(llama, tmp_path):
    m, calib, dW = llama
    ck = tmp_path / 'a.pt'
    pqi(m, calib, dW, N=2, checkpoint=ck, max_steps=2, progress=False)
    with pytest.raises(ValueError, match='different PQI run'): pqi(m, calib, dW, N=3, checkpoint=ck, progress=False)
    other = dict(dW); n = next(iter(other)); other[n] = other[n] * 0.5
    with pytest.raises(ValueError, match='different PQI run'): pqi(m, calib, other, N=2, checkpoint=ck, progress=False)

@pytest.mark.parametrize('shape', [(37, 53), (1, 1), (129, 7), (5, 3, 11)])
def test_triton_step_matches_spec_on_odd_shapes(shape):
    g = torch.Generator().manual_seed(sum(shape))
    W0, dW, G, acc = (torch.randn(shape, generator=g) for _ in range(4))
    W1, W2, a1, a2 = torch.empty(shape), torch.empty(shape), acc.clone(), acc.clone()
    c, t = 1 / 7, 0.61
    pqi_step_torch(W1, W0, dW, G, a1, c, t)
    pqi_step_triton(W2, W0, dW, G, a2, c, t, BLOCK=32)
    assert (a1 - a2).abs().max() <= 1e-6 * a1.abs().max()
    assert (W1 - W2).abs().max() <= 1e-6 * W1.abs().max()
    # and the spec is what it says: acc + c·G·dW and W0 + t·dW, each a few fp32 roundings (fused or not), so within
    # 4·2^-24 of the sum of the terms' magnitudes elementwise (a relative bound fails where the terms cancel)
    u = 2.0**-24
    assert ((a1 - (acc + c * G * dW)).abs() <= 4 * u * (acc.abs() + (c * G * dW).abs())).all()
    assert ((W1 - (W0 + t * dW)).abs() <= 4 * u * (W0.abs() + (t * dW).abs())).all()

def test_pqi_with_triton_step_equals_torch_step(llama):
    m, calib, dW = llama
    a = pqi(m, calib, dW, N=2, kernel='torch', progress=False)
    b = pqi(m, calib, dW, N=2, kernel='triton', progress=False)
    # the kernels differ by <= 1 ulp per step (a fused multiply-add), in the accumulators and in the weights the next
    # gradient is taken at; over the points that stays far below 1e-5 of the largest score (avx2: ~5e-7)
    assert (flat(a.scores) - flat(b.scores)).abs().max() <= 1e-5 * flat(a.scores).abs().max()

def test_quadrature_and_bad_input(llama):
    m, calib, dW = llama
    assert abs(sum(w for _, w in quadrature(5, 'trapezoid')) - 1) < 1e-12
    with pytest.raises(ValueError, match='unknown quadrature rule'): pqi(m, calib, dW, rule='gauss')
    with pytest.raises(ValueError, match='N'): pqi(m, calib, dW, N=0)
    with pytest.raises(ValueError, match='model.layers.9'): pqi(m, calib, {'model.layers.9.mlp.up_proj': torch.zeros(1)})
    n = next(iter(dW))
    with pytest.raises(ValueError, match='shape'): pqi(m, calib, {n: torch.zeros(2, 2)})
    with pytest.raises(ValueError, match='non-finite'): pqi(m, calib, {n: torch.full_like(dW[n], float('nan'))})
    with pytest.raises(ValueError, match='seqlen'): pqi(m, calib[0], dW)
    with pytest.raises(ValueError, match='mode'): fisher_diagonal(m, calib, [n], mode='sample')
    m.train()
    try:
        with pytest.raises(ValueError, match='training mode'): pqi(m, calib, dW)
    finally: m.eval()

def test_obs_matches_brute_force():
    m, data, dW = quadratic_fixture()
    H = input_hessians(m, data, ['A'], loss_fn=mse_loss, progress=False)['A'].double()
    Hd = H + 0.01 * H.diagonal().mean() * torch.eye(len(H), dtype=H.dtype)
    s = obs_scores({'A': dW['A']}, {'A': H.float()})['A']
    for i in range(dW['A'].shape[0]):
        for q in range(dW['A'].shape[1]):
            free = [j for j in range(len(Hd)) if j != q]
            d = torch.zeros(len(Hd), dtype=Hd.dtype); d[q] = dW['A'][i, q]
            d[free] = -torch.linalg.solve(Hd[free][:, free], Hd[free][:, [q]] * d[q]).squeeze(1)
            assert abs(s[i, q].item() - 0.5 * (d @ Hd @ d).item()) <= 1e-5 * (0.5 * (d @ Hd @ d).item())

def _tiny_folder(path):
    from sensq.data import byte_tokenizer
    m = sharp_llama(seed=0)
    m.save_pretrained(path); byte_tokenizer().save_pretrained(path)
    return path

def test_report_for_every_metric(llama, tmp_path):
    m, calib, dW = llama
    for metric in METRICS:
        rep = sensitivity_report(m, calib, QuantSpec(3, 32), metric, tmp_path / metric, actual_per_layer=metric == 'pqi',
                                 progress=False, **({'N': 16} if metric == 'pqi' else {}))
        js = json.loads((tmp_path / metric / 'report.json').read_text())
        assert js['metric'] == metric and len(js['layers']) == len(dW)
        assert (tmp_path / metric / 'summary.md').read_text().startswith('# sensq sensitivity report')
        assert (tmp_path / metric / 'per_layer.png').stat().st_size > 1000
    pq = json.loads((tmp_path / 'pqi' / 'report.json').read_text())
    assert rel(pq['predicted_total'], pq['actual_total']) < 0.01
    assert all('actual_alone' in r for r in pq['layers'])

def test_cli_writes_report_and_rejects_bad_input(tmp_path):
    folder = _tiny_folder(tmp_path / 'tiny')
    out = tmp_path / 'rep'
    rep = sensq_sensitivity(metric='pqi', bits=3, group=32, model=str(folder), text='default', n_calib=2, seqlen=32,
                            N=8, out=str(out), device='cpu', quiet=True)
    assert sorted(p.name for p in out.iterdir()) == ['.sensq-output', 'distribution.png', 'per_layer.png', 'report.json', 'summary.md']
    assert rel(rep['predicted_total'], rep['actual_total']) < 0.02
    rep2 = sensq_sensitivity(metric='fisher', bits=3, group=32, model=str(folder), n_calib=2, seqlen=32, layers='v_proj',
                             fisher_mode='window', no_per_layer=True, out=str(tmp_path / 'f'), device='cpu', quiet=True)
    assert [r['kind'] for r in rep2['layers']] == ['v', 'v']
    with pytest.raises(ValueError, match='unknown metric'):
        sensq_sensitivity(metric='gwq', model=str(folder), out=str(tmp_path / 'x'), device='cpu', quiet=True)
    with pytest.raises(ValueError, match='bits'):
        sensq_sensitivity(bits=1, model=str(folder), out=str(tmp_path / 'x'), device='cpu', quiet=True)
