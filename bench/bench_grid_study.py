"""Why GPTQ's integer-zero grid beats the min–max grid on the default model (RTN, 3 bits, groups of 128 by default).

For every block linear layer of SmolLM2-135M: the weight MSE of the two grids, and their output error on real inputs
(2 calibration windows x 256 tokens); for the v_proj layers the output error split into its token-mean (systematic)
part E·x̄ and the rest, the share of ||x̄||² in the three largest input channels, and the share of the systematic
error that comes from the weights in the bin of the level nearest 0. Then perplexity under sensq's default protocol
(`sensq.eval.DEFAULT_PROTOCOL`, held-out default text, 5 x 2048 tokens; its line is printed under the table) with one
grid everywhere, and with only the v_proj layers on the other grid.
Prints markdown tables.

Usage: python bench/bench_grid_study.py [--bits 3] [--group 128] [--threads 1] [--no-ppl]
"""
import argparse, os, time
import numpy as np
import torch
if not torch.cuda.is_available(): os.environ.setdefault("TRITON_INTERPRET", "1")
from sensq.quant import QuantSpec, rtn, find_params
from sensq.models import load_model, linear_layers, layer_kind
from sensq.data import get_calibration
from sensq.eval import DEFAULT_PROTOCOL, evaluate_protocol, protocol_line


def layer_inputs(model, calib, names):
    "Inputs (tokens, d_col) of the named linear layers on `calib`."
    X, lins = {}, linear_layers(model)
    hooks = [lins[n].register_forward_hook((lambda n: lambda mod, i, o: X.__setitem__(n, i[0].detach().reshape(-1, i[0].shape[-1])))(n))
             for n in names]
    try:
        with torch.no_grad(): model(calib)
    finally:
        for h in hooks: h.remove()
    return X


def near_zero_bin(W, spec):
    "Mask of the weights whose code is the one nearest to the zero point (the level nearest 0)."
    s, z = find_params(W, spec)
    g = torch.arange(W.shape[1]) // (spec.group_size or W.shape[1])
    S, Z = s[:, g], z[:, g]
    return torch.round(W / S + Z).clamp(0, spec.maxq) == torch.round(Z).clamp(0, spec.maxq)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, default=3); ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0); ap.add_argument("--no-ppl", action="store_true")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    A, M = QuantSpec(a.bits, a.group), QuantSpec(a.bits, a.group, int_zero=False)
    t0 = time.perf_counter()
    model, tok = load_model("default", progress=False)
    lins = linear_layers(model)
    X = layer_inputs(model, get_calibration(tok, n=2, seqlen=256), list(lins))
    rows = []
    for n, l in lins.items():
        W, x = l.weight.data, X[n]
        xm = x.mean(0)
        r = dict(name=n, kind=layer_kind(n))
        for k, s in (("a", A), ("m", M)):
            E = rtn(W, s) - W
            EY = x @ E.T
            r[f"mse_{k}"] = E.pow(2).mean().item()
            r[f"out_{k}"] = EY.pow(2).mean().item()
            r[f"bias_{k}"] = (E @ xm).pow(2).sum().item()                  # systematic: the same in every token
            r[f"fluct_{k}"] = (EY - E @ xm).pow(2).mean(0).sum().item()    # what varies from token to token
            r[f"near_{k}"] = ((E * near_zero_bin(W, s)) @ xm).pow(2).sum().item() / r[f"bias_{k}"]
        v = xm.pow(2).sort(descending=True).values
        r["top3"] = (v[:3].sum() / v.sum()).item()
        rows.append(r)
    med = lambda rs, f: float(np.median([f(r) for r in rs]))
    print(f"# sensq grid study: default model, RTN {A} (integer zero) vs {M} (min–max); torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); inputs 2 x 256 calibration tokens")
    print("\n| layers | weight MSE m/a median (min..max) | output error m/a median (min..max) |")
    print("|---|---|---|")
    for kind in ["all"] + sorted({r["kind"] for r in rows}):
        rs = [r for r in rows if kind == "all" or r["kind"] == kind]
        q = lambda f: f"{med(rs, f):.2f} ({min(map(f, rs)):.2f}..{max(map(f, rs)):.2f})"
        print(f"| {kind} ({len(rs)}) | {q(lambda r: r['mse_m'] / r['mse_a'])} | {q(lambda r: r['out_m'] / r['out_a'])} |")
    vs = [r for r in rows if r["kind"] == "v"]
    print("\nv_proj layers (medians): systematic part |E x̄|² m/a "
          f"{med(vs, lambda r: r['bias_m'] / r['bias_a']):.2f}, token-varying part m/a {med(vs, lambda r: r['fluct_m'] / r['fluct_a']):.2f}; "
          f"systematic share of the output error m {med(vs, lambda r: r['bias_m'] / (r['bias_m'] + r['fluct_m'])):.2f}, "
          f"a {med(vs, lambda r: r['bias_a'] / (r['bias_a'] + r['fluct_a'])):.2f}; share of ||x̄||² in the 3 largest channels "
          f"{med(vs, lambda r: r['top3']):.2f}; share of the systematic error from the bin of the level nearest 0: "
          f"m {med(vs, lambda r: r['near_m']):.2f}, a {med(vs, lambda r: r['near_a']):.2f}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if a.no_ppl: return
    orig = {n: l.weight.data.clone() for n, l in lins.items()}
    print(f"\n| grid of v_proj layers | grid of the other layers | ppl ({DEFAULT_PROTOCOL.name}) |\n|---|---|---|")
    for v_spec, o_spec in ((A, A), (M, M), (M, A), (A, M)):
        for n, l in lins.items(): l.weight.data.copy_(rtn(orig[n], v_spec if layer_kind(n) == "v" else o_spec))
        res = evaluate_protocol(model, tok, DEFAULT_PROTOCOL, progress=False)
        print(f"| {v_spec} | {o_spec} | {res['ppl']:.2f} |", flush=True)
    print(protocol_line(res))
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__": main()
