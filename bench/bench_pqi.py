"""PQI cost against its floor (N·n forward+backward passes) and its peak memory.

    .venv/bin/python bench/bench_pqi.py [--threads 1] [--N 8] [--n 4] [--sizes tiny,medium]

For each model size: the floor is the same loop of N·n forward+backward passes PQI runs (same windows, gradients
only on the quantized weights, `.grad` cleared after each point) without PQI's own work; it is timed
alternately with PQI `--reps` times and the fastest of each is kept (machine-load noise only ever slows a run down).
ratio = PQI wall time / floor (goal ≤ 1.15); `overhead` is PQI's own time outside its forward+backward passes
relative to the time inside them, measured within the same run, so it does not depend on machine load. Memory:
each mode runs in a fresh subprocess that builds the model and the deltas (PQI's input), resets the kernel's peak
RSS counter (/proc/self/clear_refs) and then runs either the floor loop or PQI; the goal is
PQI peak ≤ 1.5 × floor peak + one fp32 accumulator per quantized weight.
"""
import argparse, json, os, subprocess, sys, time, resource
os.environ.setdefault('TRITON_INTERPRET', '1')

SIZES = {  # name: (tiny_llama kwargs, seqlen, group size)
    'tiny': (dict(n_layers=2, hidden=64, intermediate=128, n_heads=4, n_kv_heads=2, vocab=256), 64, 32),
    'medium': (dict(n_layers=4, hidden=512, intermediate=1408, n_heads=8, n_kv_heads=4, vocab=8192), 256, 128),
}

def build(size, n, seed=0):
    import torch
    from sensq.models import tiny_llama
    from sensq.quant import QuantSpec
    from sensq.taylor import weight_deltas
    kw, seqlen, gs = SIZES[size]
    model = tiny_llama(seed=seed, attn_implementation='sdpa', **kw)
    calib = torch.randint(0, kw['vocab'], (n, seqlen), generator=torch.Generator().manual_seed(seed))
    return model, calib, weight_deltas(model, QuantSpec(bits=3, group_size=gs))

def floor_loop(model, calib, dW, N):
    "N points × n windows of forward+backward, exactly as PQI runs them, without PQI's step."
    from sensq.eval import lm_loss
    from sensq.taylor import grad_only, _resolve, window_chunks
    params = _resolve(model, dW)
    t = time.perf_counter()
    with grad_only(model, list(params.values())):
        for _ in range(N):
            for sl, w in window_chunks(calib, 1): (lm_loss(model, calib[sl]) * w).backward()
            for p in params.values(): p.grad = None
    return time.perf_counter() - t

def rss_gb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9

def _status_gb(key):
    for line in open('/proc/self/status'):
        if line.startswith(key): return int(line.split()[1]) * 1024 / 1e9

def child(size, mode, N, n, threads):
    "Peak RSS of one mode, measured from after the model and deltas are built (VmHWM reset via clear_refs)."
    import torch
    torch.set_num_threads(threads)
    from sensq.pqi import pqi
    model, calib, dW = build(size, n)
    import gc; gc.collect()
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')   # reset the peak-RSS counter (Linux)
    before = _status_gb('VmRSS:')
    if mode == 'floor': floor_loop(model, calib, dW, N)
    else: pqi(model, calib, dW, N=N, progress=False)
    print(json.dumps(dict(before=before, peak=_status_gb('VmHWM:'))))

def timing(size, N, n, threads, reps):
    import torch
    torch.set_num_threads(threads)
    from sensq.pqi import pqi
    model, calib, dW = build(size, n)
    floor_loop(model, calib, dW, 1)                        # warm-up
    floors, runs = [], []
    for _ in range(reps):                                  # alternate, keep the fastest of each (machine-load noise)
        floors.append(floor_loop(model, calib, dW, N))
        runs.append(pqi(model, calib, dW, N=N, progress=False))
    floor, best = min(floors), min(runs, key=lambda r: r.seconds)
    nq = sum(d.numel() for d in dW.values())
    nparams = sum(p.numel() for p in model.parameters())
    return dict(size=size, params=nparams, quantized=nq, N=N, n=n, seqlen=calib.shape[1], passes=N * n,
                fwd_bwd_ms=1000 * floor / (N * n), floor_s=floor, pqi_s=best.seconds, ratio=best.seconds / floor,
                overhead=(best.seconds - best.fwd_bwd_seconds) / best.fwd_bwd_seconds,
                floor_spread=(max(floors) - floor) / floor)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--N', type=int, default=8)
    ap.add_argument('--n', type=int, default=4)
    ap.add_argument('--sizes', default='tiny,medium')
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--child', nargs=2, metavar=('SIZE', 'MODE'), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child: return child(a.child[0], a.child[1], a.N, a.n, a.threads)
    from sensq.core import format_table
    rows, mem = [], []
    for size in a.sizes.split(','):
        rows.append(timing(size, a.N, a.n, a.threads, a.reps))
        peaks = {}
        for mode in ('floor', 'pqi'):
            out = subprocess.run([sys.executable, __file__, '--child', size, mode, '--N', str(a.N), '--n', str(a.n),
                                  '--threads', str(a.threads)], capture_output=True, text=True, check=True)
            peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        acc_gb = rows[-1]['quantized'] * 4 / 1e9
        fl, pq = peaks['floor'], peaks['pqi']
        mem.append(dict(size=size, base_gb=fl['before'], floor_peak_gb=fl['peak'], pqi_peak_gb=pq['peak'], acc_gb=acc_gb,
                        floor_extra_gb=fl['peak'] - fl['before'], pqi_extra_gb=pq['peak'] - pq['before'],
                        goal_gb=1.5 * fl['peak'] + acc_gb, ok=pq['peak'] <= 1.5 * fl['peak'] + acc_gb))
    import torch
    print(f"# bench_pqi — torch {torch.__version__}, {a.threads} thread(s), {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}")
    print('\n## time: PQI vs its floor of N·n forward+backward passes\n')
    print(format_table(rows))
    print('\nratio = best PQI wall / best floor wall (alternating runs); overhead = PQI time outside its forward+backward '
          'passes / time inside them (load-independent); floor_spread = (slowest − fastest floor) / fastest.')
    print('\n## peak RSS (fresh process per mode; peak counter reset after building model and deltas = base)\n')
    print(format_table(mem))

if __name__ == '__main__': main()
