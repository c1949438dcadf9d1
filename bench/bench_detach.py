"""Does restoring the most significant weights lower the loss? (ReQuant's Algorithm 2 step, measured directly)

On the default model (SmolLM2-135M), all 210 block linear layers quantized with RTN (default grid, 3 bits, groups
of 128), calibration windows from the default text. Computes per-element PQI (midpoint, N intervals) and the
first-order score at the quantized point, g(w̃)·Δw, then restores the top-k weights (original values) chosen by
each score, per layer (ReQuant's default) or over the whole model, or at random, and measures the actual
calibration loss. A second table restores the top m weights of the endpoint score one batch at a time to show
where the first-order prediction stops holding.

    .venv/bin/python bench/bench_detach.py [--n 4] [--seqlen 256] [--N 4] [--threads 1]
"""
import argparse, os, platform, time
os.environ.setdefault('TRITON_INTERPRET', '1')
import torch
from sensq.core import format_table
from sensq.models import load_model, linear_layers
from sensq.data import get_calibration
from sensq.quant import QuantSpec, quantize, dequantize
from sensq.taylor import calib_loss, loss_gradient
from sensq.pqi import pqi
from sensq.requant import select_significant

def set_weights(lins, Ws):
    "Copy `Ws[name]` into each layer's weight."
    with torch.no_grad():
        for k, l in lins.items(): l.weight.copy_(Ws[k])

def restored(W0, Wq, sel):
    "Quantized weights with the positions of `sel` set back to the original values."
    return {k: torch.where(sel[k], W0[k], Wq[k]) for k in W0}

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=4); p.add_argument('--seqlen', type=int, default=256)
    p.add_argument('--N', type=int, default=4); p.add_argument('--bits', type=int, default=3)
    p.add_argument('--group', type=int, default=128); p.add_argument('--threads', type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, tok = load_model('default', progress=False); model.eval()
    calib = get_calibration(tok, 'default', n=a.n, seqlen=a.seqlen, seed=0)
    lins = linear_layers(model); names = list(lins)
    W0 = {k: l.weight.detach().clone() for k, l in lins.items()}
    spec = QuantSpec(a.bits, a.group)
    Wq = {k: dequantize(quantize(W0[k], spec)) for k in names}
    D = {k: Wq[k] - W0[k] for k in names}
    F0 = calib_loss(model, calib)
    set_weights(lins, Wq); Fq = calib_loss(model, calib)
    g = loss_gradient(model, calib, names)
    set_weights(lins, W0)
    res = pqi(model, calib, D, N=a.N, progress=False)
    endpoint = {k: g[k] * D[k] for k in names}     # first-order drop of F when weight i is restored at w̃
    gen = torch.Generator().manual_seed(0)
    scores = {'pqi': res.scores, 'endpoint g·Δw': endpoint,
              'random': {k: torch.rand(W0[k].shape, generator=gen) for k in names}}
    none = {k: torch.zeros_like(W0[k], dtype=torch.bool) for k in names}
    N_w = sum(w.numel() for w in W0.values())
    rows = []
    for frac in (0.00025, 0.0005):
        for label, sc in scores.items():
            for scope in ('layer', 'global'):
                sel = select_significant(sc, none, round(frac * N_w), scope)
                set_weights(lins, restored(W0, Wq, sel)); F = calib_loss(model, calib)
                rows.append(dict(restored=f'{frac:.3%}', by=label, scope=scope, dF_before=Fq - F0, dF_after=F - F0,
                                 pqi_of_restored=sum(float(res.scores[k][sel[k]].sum()) for k in names)))
    flat = torch.cat([endpoint[k].flatten() for k in names])
    top = flat.topk(200)
    steps = []
    for m in (1, 2, 5, 10, 20, 50, 100, 200):
        mask = torch.zeros(N_w, dtype=torch.bool); mask[top.indices[:m]] = True
        sel, i = {}, 0
        for k in names: sel[k] = mask[i:i + W0[k].numel()].view(W0[k].shape); i += W0[k].numel()
        set_weights(lins, restored(W0, Wq, sel)); F = calib_loss(model, calib)
        steps.append(dict(top_m=m, actual_change=F - Fq, first_order_prediction=-float(top.values[:m].sum()),
                          layers=len([k for k in names if sel[k].any()])))
    set_weights(lins, W0)
    print(f"# bench_detach — torch {torch.__version__}, {a.threads} thread(s), {os.cpu_count()} CPUs, {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(f"default model, RTN {spec}, {len(names)} layers, {N_w:,} weights; calibration {a.n} x {a.seqlen}; "
          f"F0 {F0:.4f}, F(w̃) {Fq:.4f}; PQI N={a.N} midpoint: Σ {res.total:.4f} vs actual {Fq - F0:.4f}\n")
    print(format_table(rows, floatfmt='.4g')); print()
    print(format_table(steps, floatfmt='.4g'))
    print(f"\nwall {time.perf_counter() - t0:.0f} s")

if __name__ == '__main__': main()
