"""Cost of the output-adaptive Hessian (sensq.hessian.oac_hessians) against its floor, and its peak memory.

For a few blocks b of the default model (SmolLM2-135M), on n calibration windows of seqlen tokens:
  * floor     = n forward+backward passes from block b's cached inputs to the loss, gradient w.r.t. block b's
                linear weights only (what any per-sample method must at least do: one pass per sample);
  * oac       = `oac_hessians(model, b, ...)`: the same passes plus recording X_n, Δ_n and folding G_nᵀG_n (fp32);
  * full f+b  = n forward+backward passes of the whole model, all weights requiring gradients (the unit the
                issue counts in);
and the peak resident memory above the model's own footprint during each (sampled every 2 ms from
/proc/self/statm, after malloc_trim), against the working set one block's per-sample gradients need: Σ_layers d_row·d_col (one G_n)
+ Σ_layers d_col² (the accumulators), fp32. Whole-model Ĥ_OAC work = n·L(L+1)/2 block passes + n·L head passes
(`oac_cost`); from the oac times at the first and last block measured, t(b) = (L−b)·c_block + c_head is fitted and
the whole-model time per sequence Σ_b t(b) is reported in full forward+backward passes.

    .venv/bin/python bench/bench_hessian.py [--n 4] [--seqlen 256] [--blocks 0 15 29] [--threads 2] [--batch 1] [--repeat 1]
"""
import argparse, ctypes, os, platform, threading, time
import torch
from sensq.core import format_table
from sensq.models import load_model, get_blocks, block_linear_layers
from sensq.data import get_calibration
from sensq.hessian import capture_block_inputs, run_block, oac_hessians, loss_from_block, oac_cost

_PAGE = os.sysconf('SC_PAGE_SIZE')
def rss() -> int:
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * _PAGE

class PeakRSS:
    "Peak RSS above the RSS at entry, sampled by a thread every `dt` seconds, in bytes (`.peak`)."
    def __init__(self, dt=0.002): self.dt = dt
    def _run(self):
        while not self._stop.is_set(): self.peak = max(self.peak, rss() - self.base); time.sleep(self.dt)
    def __enter__(self):
        self.base, self.peak, self._stop = rss(), 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True); self._t.start(); return self
    def __exit__(self, *exc):
        self._stop.set(); self._t.join(); self.peak = max(self.peak, rss() - self.base)

def floor_passes(model, b, hidden, kwargs, ids, batch):
    "n forward+backward passes from block b, gradient w.r.t. block b's linear weights only."
    lins = block_linear_layers(get_blocks(model)[b]); ws = [l.weight for l in lins.values()]
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters(): p.requires_grad_(False)
    for w in ws: w.requires_grad_(True)
    try:
        with torch.enable_grad():
            for i in range(0, len(hidden), batch):
                loss = loss_from_block(model, b, hidden[i:i+batch], kwargs, ids[i:i+batch]).sum()
                torch.autograd.grad(loss, ws)
    finally:
        for p, f in flags.items(): p.requires_grad_(f)

def full_passes(model, ids, batch):
    for i in range(0, len(ids), batch):
        x = ids[i:i+batch]
        logits = model(x, use_cache=False).logits[:, :-1]
        torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:]).backward()
    model.zero_grad(set_to_none=True)

_libc = ctypes.CDLL('libc.so.6')
REPEAT = 1
def timed(fn):
    "min wall time and max peak RSS growth (MiB) over REPEAT runs (the minimum is the least disturbed by other jobs)."
    ss, ms = [], []
    for _ in range(REPEAT):
        _libc.malloc_trim(0)                   # hand freed heap back to the OS so RSS growth measures this run
        with PeakRSS() as m:
            t = time.perf_counter(); fn(); ss.append(time.perf_counter() - t)
        ms.append(m.peak / 2**20)
    return min(ss), max(ms)

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=4); p.add_argument('--seqlen', type=int, default=256)
    p.add_argument('--blocks', type=int, nargs='+', default=[0, 15, 29]); p.add_argument('--threads', type=int, default=2)
    p.add_argument('--batch', type=int, default=1); p.add_argument('--repeat', type=int, default=1)
    a = p.parse_args()
    global REPEAT; REPEAT = a.repeat
    torch.set_num_threads(a.threads)
    model, tok = load_model('default', progress=False)
    calib = get_calibration(tok, n=a.n, seqlen=a.seqlen)
    L = len(get_blocks(model))
    inp = capture_block_inputs(model, calib)
    hidden, done = inp.hidden, 0
    full_passes(model, calib[:1], 1)           # warm-up (lazy initialisation, allocator)
    t_full, m_full = timed(lambda: full_passes(model, calib, a.batch))
    rows = []
    for b in sorted(a.blocks):
        if not 0 <= b < L: raise SystemExit(f"block {b} out of range (model has {L} blocks)")
        for k in range(done, b): hidden = run_block(get_blocks(model)[k], hidden, inp.kwargs)
        done = b
        lins = block_linear_layers(get_blocks(model)[b])
        ws_mib = sum(l.weight.numel() + l.in_features ** 2 for l in lins.values()) * 4 / 2**20
        t_floor, m_floor = timed(lambda: floor_passes(model, b, hidden, inp.kwargs, calib, a.batch))
        t_oac, m_oac = timed(lambda: oac_hessians(model, b, hidden, inp.kwargs, calib, batch_size=a.batch))
        rows.append(dict(block=b, blocks_in_graph=L - b, floor_s=t_floor, oac_s=t_oac, oac_over_floor=t_oac / t_floor,
                         oac_in_full_passes=t_oac / t_full * a.n, naive_full_passes=a.n * (L - b) / L,
                         floor_peak_MiB=m_floor, oac_peak_MiB=m_oac, extra_MiB=m_oac - m_floor, G_plus_H_MiB=ws_mib))
    print(f"# Ĥ_OAC cost: SmolLM2-135M ({L} blocks), n={a.n} x seqlen={a.seqlen}, micro-batch {a.batch}, {a.threads} threads, best of {a.repeat}, "
          f"torch {torch.__version__}, {platform.machine()}")
    print(f"# full-model forward+backward: {t_full / a.n:.3f} s per sequence, peak +{m_full:.0f} MiB over the loaded model")
    print(format_table(rows, floatfmt='.3g'))
    first, last = rows[0], rows[-1]
    if last['block'] > first['block']:
        c_blk = (first['oac_s'] - last['oac_s']) / (last['block'] - first['block']) / a.n
        c_head = last['oac_s'] / a.n - (L - last['block']) * c_blk
        cost = oac_cost(L, 1)
        whole = cost['block_passes'] * c_blk + cost['head_passes'] * c_head
        print(f"\nfit t(b) = (L-b)*{c_blk:.3f} s + {c_head:.3f} s per sequence (block pass, head pass incl. accumulation); "
              f"whole model: {cost['block_passes']} block passes + {cost['head_passes']} head passes = {whole:.0f} s per "
              f"calibration sequence = {whole / (t_full / a.n):.1f} full-model forward+backward passes (naive count (L+1)/2 = {(L + 1) / 2:.1f})")

if __name__ == '__main__': main()
