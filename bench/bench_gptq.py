"""Benchmark sensq.gptq / sensq.spqr: per-layer cost against the matrix-product floor, and full-model GPTQ wall time.

`layer` (default): a d x d layer (4096 by default) with a Hessian of correlated inputs. Measures, in one run and with
the same threads: one `W @ H` product; the *floor* = the work any GPTQ must do, i.e. the inverse Cholesky factor
(`sensq.hessian.inverse_cholesky`: Cholesky, inverse, Cholesky) plus the lazy block updates (sum over blocks of
`W[:, i2:] -= E @ U[i1:i2, i2:]`); then `gptq_quantize` end to end for several grids, and `spqr_quantize` once.
Prints a markdown table with seconds and the ratios to `W @ H` and to the floor.

`model`: GPTQ (and optionally SpQR) on the default model (SmolLM2-135M) with a small calibration set, wall time and
perplexity under sensq's default protocol (`sensq.eval.DEFAULT_PROTOCOL`: held-out default text, 5 x 2048 tokens;
`--eval-windows`/`--eval-seqlen` change it) against full precision and RTN at the same grid; the protocol line is
printed under the table.

Usage: python bench/bench_gptq.py layer [--size 4096] [--threads 1]
       python bench/bench_gptq.py model [--n 16] [--seqlen 512] [--threads 1] [--minmax] [--act-order] [--spqr]
"""
import argparse, math, os, platform, sys, time
import torch
if not torch.cuda.is_available(): os.environ.setdefault("TRITON_INTERPRET", "1")
from sensq.quant import QuantSpec
from sensq.hessian import inverse_cholesky
from sensq.gptq import gptq_quantize, gptq_block_loop, act_order_permutation
from sensq.spqr import spqr_quantize


def timed(fn):
    t0 = time.perf_counter(); out = fn(); return out, time.perf_counter() - t0


def best_of(fn, reps):
    fn()
    return min(timed(fn)[1] for _ in range(reps))


def layer(a):
    d = a.size
    g = torch.Generator().manual_seed(0)
    X = (torch.randn(d, d, generator=g) / d**.5) @ torch.randn(d, 2 * d, generator=g) + 0.1 * torch.randn(d, 2 * d, generator=g)
    H = 2 * X @ X.T / X.shape[1]; del X
    W = torch.randn(d, d, generator=g)
    print(f"# sensq.gptq layer bench: {d}x{d} float32, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; min over {a.reps} interleaved rounds")
    WT, E = W.T.contiguous(), torch.randn(128, d, generator=g)
    def lazy(U):
        for i1 in range(0, d, 128):
            i2 = min(i1 + 128, d)
            WT[i2:].addmm_(U[i1:i2, i2:].T, E[:i2 - i1], alpha=-1)
    gptq_quantize(W[:64, :256], H[:256, :256], QuantSpec(4, 128))          # warm-up
    base = QuantSpec(4, 128)
    t = dict(mm=[], fac=[], lazy=[], loop=[], gptq=[])
    for _ in range(a.reps):                                    # interleaved, so a busy machine slows all alike
        t['mm'].append(timed(lambda: W @ H)[1])
        ic, s = timed(lambda: inverse_cholesky(H)); t['fac'].append(s)
        t['lazy'].append(timed(lambda: lazy(ic.U))[1])
        t['loop'].append(timed(lambda: gptq_block_loop(W, ic.U, base))[1])
        t['gptq'].append(timed(lambda: gptq_quantize(W, H, base))[1])
    m = {k: min(v) for k, v in t.items()}
    floor = m['fac'] + m['lazy']
    rows = [dict(what="W @ H (one product)", s=m['mm']), dict(what="inverse Cholesky factor (sensq.hessian)", s=m['fac']),
            dict(what="lazy block updates only", s=m['lazy']), dict(what="floor = factor + lazy updates", s=floor),
            dict(what=f"gptq_block_loop alone {base}", s=m['loop']), dict(what=f"**gptq_quantize {base}**", s=m['gptq'])]
    for spec, ao, sg in [(QuantSpec(4, 128), True, False), (QuantSpec(3, 128), True, True), (QuantSpec(3, None), False, False),
                         (QuantSpec(2, 64), True, False)]:
        r, s = timed(lambda: gptq_quantize(W, H, spec, act_order=ao, static_groups=sg))
        rows.append(dict(what=f"gptq_quantize {spec}{' act-order' if ao else ''}{' static' if sg else ''} (1 run)", s=s))
    if not a.no_spqr:
        sspec = QuantSpec(3, 16, int_zero=False)                     # SpQR's min–max grid
        r, s = timed(lambda: spqr_quantize(W, H, sspec, tau=0.2))
        rows.append(dict(what=f"spqr_quantize {sspec} tau=0.2, {r.n_outliers / W.numel():.2%} outliers (1 run)", s=s))
    print("| step | seconds | / (W @ H) | / floor |"); print("|---|---|---|---|")
    for r in rows: print(f"| {r['what']} | {r['s']:.2f} | {r['s'] / m['mm']:.2f} | {r['s'] / floor:.2f} |")
    print(f"all rounds (s): " + ", ".join(f"{k}={[round(x, 2) for x in v]}" for k, v in t.items()))


def model(a):
    from sensq.models import load_model, linear_layers
    from sensq.data import get_calibration
    from sensq.eval import DEFAULT_PROTOCOL, EvalProtocol, evaluate_protocol, protocol_line, rtn_quantize_model
    from sensq.gptq import gptq_quantize_model
    from sensq.spqr import spqr_quantize_model
    from sensq.core import peak_rss_gb
    spec = QuantSpec(a.bits, a.group, int_zero=not a.minmax)
    protocol = EvalProtocol(seqlen=a.eval_seqlen or DEFAULT_PROTOCOL.seqlen, windows=a.eval_windows or DEFAULT_PROTOCOL.windows)
    print(f"# sensq.gptq full-model bench: default model, calib {a.n}x{a.seqlen} (default text, seed 0), {spec}, "
          f"eval protocol {protocol.name}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    (m, tok), t_load = timed(lambda: load_model('default', progress=False))
    calib = get_calibration(tok, n=a.n, seqlen=a.seqlen)
    orig = {n: l.weight.data.clone() for n, l in linear_layers(m).items()}
    def restore():
        for n, l in linear_layers(m).items(): l.weight.data.copy_(orig[n])
    last = {}
    def ppl():
        last.update(evaluate_protocol(m, tok, protocol, progress=False)); return last['ppl']
    rows = [dict(method='fp32', bpw=32.0, seconds=0.0, ppl=ppl())]
    st = rtn_quantize_model(m, calib, spec); rows.append(dict(method=f'rtn {spec}', bpw=st['bits_per_weight'], seconds=st['seconds'], ppl=ppl())); restore()
    st = gptq_quantize_model(m, calib, spec, progress=False, act_order=a.act_order, true_sequential=a.true_sequential)
    rows.append(dict(method=f"gptq {spec}{' act-order' if a.act_order else ''}{' true-seq' if a.true_sequential else ''}",
                     bpw=st['bits_per_weight'], seconds=st['seconds'], ppl=ppl(), retries=st['retries'])); restore()
    if a.spqr:
        sspec = QuantSpec(a.bits, 16, int_zero=False)                # SpQR's min–max grid
        st = spqr_quantize_model(m, calib, sspec, progress=False, tau=0.2)
        rows.append(dict(method=f"spqr {sspec} tau=0.2 ({st['outlier_fraction']:.2%} outliers)", bpw=st['bits_per_weight'],
                         seconds=st['seconds'], ppl=ppl(), retries=st['retries'])); restore()
    print(f"model load {t_load:.1f} s; peak RSS {peak_rss_gb():.2f} GB")
    print("| method | bits/weight | quantize seconds | ppl |"); print("|---|---|---|---|")
    for r in rows: print(f"| {r['method']} | {r['bpw']:.4f} | {r['seconds']:.1f} | {r['ppl']:.3f} |")
    print(protocol_line(last))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", default="layer", choices=["layer", "model"])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-spqr", action="store_true", help="layer: skip the SpQR timing")
    ap.add_argument("--n", type=int, default=16); ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--bits", type=int, default=3); ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--minmax", action="store_true", help="model: the min–max grid (real zero) instead of GPTQ's integer-zero default")
    ap.add_argument("--act-order", action="store_true"); ap.add_argument("--true-sequential", action="store_true")
    ap.add_argument("--eval-windows", type=int, default=None, help="model: evaluation windows (default: DEFAULT_PROTOCOL's 5)")
    ap.add_argument("--eval-seqlen", type=int, default=None, help="model: tokens per evaluation window (default: DEFAULT_PROTOCOL's 2048)")
    ap.add_argument("--spqr", action="store_true", help="model: also run SpQR (groups of 16, tau 0.2)")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    layer(a) if a.what == "layer" else model(a)


if __name__ == "__main__": main()
