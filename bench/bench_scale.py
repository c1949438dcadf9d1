"""sensq at the scale of the papers, on one GPU: Llama-3.2-1B- and Llama-3-8B-shaped models with random weights.

Rows (every time in seconds, every ratio within this run, every peak = torch.cuda.max_memory_allocated in GB):

- fwd_bwd_1b / fwd_bwd_8b: one forward+backward of the whole model at 1 x 2048 in bf16 (gradients of the block
  linear layers only, as PQI takes them) — the unit the other rows are measured in, and the anchors of
  shared/docs/toolchain.md (H100: 1B 61.6 ms; 8B 206 ms, 32.5 GB with every gradient).
- pqi_1b_b1 / pqi_1b_b8: PQI with N = 8 points over n = 8 windows of 2048 on every block linear layer of the 1B
  shape (3-bit RTN, groups of 128), one window per forward+backward (bf16 gradients summed in fp32) and all 8 at
  once; `floor` is the same N·n windows of forward+backward without PQI's own work (same batching, alternated with
  PQI, the fastest of each kept); ratio = PQI / floor (goal <= 1.05).
- pqi_8b: the same on the 8B shape with fewer windows (N = 2, n = 2), on the linear layers of the first
  `--pqi8b_blocks` blocks (PQI's state for every layer of 8B is ~98 GB: see nbs/06_devices.ipynb, `memory_plan`).
- gptq_layer_*: `gptq_quantize` of one 8B-shaped layer (3 bits, groups of 128) on a Hessian from 4096 random
  tokens, against one fp32 `W @ H` of the same shapes (TF32 off, as everywhere in sensq).
- gptq_offload_8b: `gptq_quantize_model(..., device='cuda')` with the 8B-shaped model in CPU memory, n = 16 windows
  of 2048, the layers of the first `--offload_blocks` blocks: peak GPU memory (against the whole model's 16 GB and
  `memory_plan`'s estimate) and seconds per block.
- oac_block_first / oac_block_last: OAC's Ĥ (`oac_hessians`, per-sample gradients of n = 4 windows of 2048) for the
  first and the last block of the 1B shape, against n forward+backward passes of the whole model.
- oac_offload_1b: the same for block L-2 with the model in CPU memory (later blocks and head visiting the GPU).

Usage: python bench/bench_scale.py [--quick] [--json PATH] [--dry-run]
Without CUDA it prints one line and exits 0. --dry-run runs every row's code on the CPU on tiny shapes (timings
meaningless, peaks None).
"""
import argparse, datetime, gc, json, math, os, platform, sys, time
from pathlib import Path

DRY = '--dry-run' in sys.argv
if DRY: os.environ.setdefault('TRITON_INTERPRET', '1')
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch

TINY = {  # the dry run's stand-ins for the real shapes (same code paths)
    '1b': dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=256, tie_word_embeddings=True),
    '8b': dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=256, tie_word_embeddings=False)}


class Bench:
    def __init__(self, a):
        self.a, self.dry = a, a.dry_run
        self.dev = torch.device('cpu' if self.dry else 'cuda')
        self.seqlen = 32 if self.dry else 2048
        self.rows = []

    def shape(self, name): return TINY[name] if self.dry else name

    def sync(self):
        if self.dev.type == 'cuda': torch.cuda.synchronize()

    def timed(self, fn):
        "Seconds of one call (synchronised) and its result."
        self.sync(); t = time.perf_counter(); r = fn(); self.sync()
        return time.perf_counter() - t, r

    def add(self, **row):
        self.rows.append(row)
        print('  ' + ', '.join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    def free(self):
        gc.collect()
        if self.dev.type == 'cuda': torch.cuda.empty_cache()

    def ids(self, vocab, n, seed=0):
        return torch.randint(0, vocab, (n, self.seqlen), generator=torch.Generator().manual_seed(seed))


def floor_loop(model, calib, dW, N, batch_size):
    "N points x the windows of forward+backward, batched as PQI batches them, without PQI's own work."
    from sensq.eval import lm_loss
    from sensq.taylor import grad_only, _resolve, window_chunks
    params = _resolve(model, dW)
    with grad_only(model, list(params.values())):
        for _ in range(N):
            for sl, w in window_chunks(calib, batch_size): (lm_loss(model, calib[sl]) * w).backward()
            for p in params.values(): p.grad = None


def fwd_bwd(B, model, name, linear):
    "One forward+backward at 1 x seqlen (gradients of the block linear layers): seconds (best of 3) and peak."
    from sensq.eval import lm_loss
    from sensq.taylor import grad_only, _weights
    from sensq.devices import gpu_peak
    ps = list(_weights(model, linear).values())
    x = B.ids(model.config.vocab_size, 1)
    def once():
        with grad_only(model, ps):
            lm_loss(model, x).backward()
            for p in ps: p.grad = None
    once()
    with gpu_peak() as pk: ts = [B.timed(once)[0] for _ in range(3)]
    B.add(row=f'fwd_bwd_{name}', seconds=min(ts), peak_gb=pk.gb, params=sum(p.numel() for p in model.parameters()))
    return min(ts)


def pqi_row(B, model, name, N, n, batch_size, layers, reps):
    from sensq.pqi import pqi
    from sensq.quant import QuantSpec
    from sensq.taylor import weight_deltas
    from sensq.devices import gpu_peak
    dW = weight_deltas(model, QuantSpec(3, 128 if not B.dry else 32), layers)
    calib = B.ids(model.config.vocab_size, n, seed=1)
    try:
        floor_loop(model, calib, dW, 1, batch_size)                                   # warm-up
        floors, runs = [], []
        for _ in range(reps):
            floors.append(B.timed(lambda: floor_loop(model, calib, dW, N, batch_size))[0])
            with gpu_peak() as pk: t, r = B.timed(lambda: pqi(model, calib, dW, N=N, batch_size=batch_size, progress=False))
            runs.append((t, r, pk.gb))
    except torch.OutOfMemoryError as e:
        B.add(row=f'pqi_{name}', N=N, n=n, batch_size=batch_size, error=f'out of memory: {str(e)[:120]}'); return
    finally: B.free()
    t, r, peak = min(runs, key=lambda x: x[0])
    fl = min(floors)
    B.add(row=f'pqi_{name}', N=N, n=n, seqlen=B.seqlen, batch_size=batch_size, layers=len(dW),
          weights=sum(d.numel() for d in dW.values()), seconds=t, floor_seconds=fl, ratio=t / fl,
          fwd_bwd_share=r.fwd_bwd_seconds / t, peak_gb=peak, total=r.total)
    del dW; B.free()


def gptq_layers(B, reps):
    from sensq.gptq import gptq_quantize
    from sensq.quant import QuantSpec
    from sensq.devices import param_counts, shape_of
    lin = param_counts(B.shape('8b'))['linear']
    for lname in ('q_proj', 'gate_proj', 'down_proj'):
        d_row, d_col = lin[lname]
        g = torch.Generator(device=B.dev).manual_seed(0)
        X = torch.randn(4096 if not B.dry else 256, d_col, device=B.dev, generator=g)
        H = 2 * X.T @ X / len(X)
        W = (0.02 * torch.randn(d_row, d_col, device=B.dev, generator=g)).to(torch.bfloat16)
        spec = QuantSpec(3, 128 if not B.dry else 32)
        gptq_quantize(W, H, spec)                                                      # warm-up
        t = min(B.timed(lambda: gptq_quantize(W, H, spec))[0] for _ in range(reps))
        Wf = W.float()
        Wf @ H
        tm = min(B.timed(lambda: Wf @ H)[0] for _ in range(3))
        B.add(row=f'gptq_layer_{lname}', d_row=d_row, d_col=d_col, seconds=t, matmul_seconds=tm, ratio=t / tm)
        del X, H, W, Wf; B.free()


def oac_rows(B, model, fb_seconds, n):
    from sensq.hessian import capture_block_inputs, run_block, oac_hessians, on_device
    from sensq.models import get_blocks
    from sensq.devices import gpu_peak
    calib = B.ids(model.config.vocab_size, n, seed=2)
    blocks = get_blocks(model)
    L = len(blocks)
    inp = capture_block_inputs(model, calib)
    h = inp.hidden
    for b in range(L):
        if b in (0, L - 1):
            oac_hessians(model, b, h[:1], inp.kwargs, calib[:1])                        # warm-up
            with gpu_peak() as pk: t, _ = B.timed(lambda: oac_hessians(model, b, h, inp.kwargs, calib))
            B.add(row=f"oac_block_{'first' if b == 0 else 'last'}", block=b, later_blocks=L - 1 - b, n=n, seconds=t,
                  fwd_bwd_seconds=n * fb_seconds, ratio=t / (n * fb_seconds), peak_gb=pk.gb)
        if b == L - 2: h_off = h.clone()
        if b + 1 < L: h = run_block(blocks[b], h, inp.kwargs)
    del h; B.free()
    # the model in CPU memory, block L-2 on the device, the last block and the head visiting it one at a time
    b = L - 2
    model.to('cpu'); B.free()
    with on_device(blocks[b], B.dev):
        with gpu_peak() as pk: t, _ = B.timed(lambda: oac_hessians(model, b, h_off, inp.kwargs, calib, offload=True))
    B.add(row='oac_offload_1b', block=b, later_blocks=L - 1 - b, n=n, seconds=t, peak_gb=pk.gb)
    del h_off; B.free()


def gptq_offload(B, model, n, blocks_q):
    from sensq.gptq import gptq_quantize_model
    from sensq.quant import QuantSpec
    from sensq.models import get_blocks
    from sensq.devices import gpu_peak, memory_plan, param_counts
    calib = B.ids(model.config.vocab_size, n, seed=3)
    layers = [f'model.layers.{b}.' + k for b in range(blocks_q) for k in
              ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj')]
    with gpu_peak() as pk:
        t, st = B.timed(lambda: gptq_quantize_model(model, calib, QuantSpec(3, 128 if not B.dry else 32), layers=layers,
                                                    progress=False, device=B.dev))
    plan = {r['method']: r for r in memory_plan(B.shape('8b'), n=n, seqlen=B.seqlen)}['GPTQ / SpQR, offloaded']
    pc = param_counts(B.shape('8b'))
    B.add(row='gptq_offload_8b', n=n, seqlen=B.seqlen, blocks=blocks_q, seconds=t, seconds_per_block=t / blocks_q,
          peak_gb=pk.gb, model_gb=2 * pc['total'] / 1e9, block_gb=2 * pc['block'] / 1e9, plan_gb=plan['gpu_total'],
          model_on=str(next(model.parameters()).device), bits_per_weight=st['bits_per_weight'])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='one repetition per timing, fewer windows for OAC')
    ap.add_argument('--json', default=None, help='write the rows and the machine here')
    ap.add_argument('--dry-run', action='store_true', help='every row on the CPU on tiny shapes (no timing meaning)')
    ap.add_argument('--pqi8b_blocks', type=int, default=8, help='pqi_8b: blocks whose linear layers are scored')
    ap.add_argument('--offload_blocks', type=int, default=2, help='gptq_offload_8b: blocks quantized')
    ap.add_argument('--skip', default='', help='comma-separated row groups to skip: fwd,pqi1b,oac,gptq,pqi8b,offload')
    a = ap.parse_args()
    if not a.dry_run and not torch.cuda.is_available():
        print("bench_scale: CUDA not available; nothing measured (--dry-run exercises the code paths on the CPU)"); return 0
    from sensq.devices import shaped_llama, param_counts
    from sensq.models import linear_layers
    torch.backends.cuda.matmul.allow_tf32 = False                                      # sensq's default; stated in the JSON
    B, skip = Bench(a), set(filter(None, a.skip.split(',')))
    reps = 1 if a.quick else 2
    import transformers, triton
    meta = dict(gpu=torch.cuda.get_device_name() if not a.dry_run else 'none (dry run)', torch=torch.__version__,
                triton=triton.__version__, transformers=transformers.__version__, date=datetime.datetime.now().isoformat(timespec='seconds'),
                host=platform.node(), dry_run=a.dry_run, quick=a.quick, tf32=torch.backends.cuda.matmul.allow_tf32, seqlen=B.seqlen)
    print(f"# bench_scale — {meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}, transformers {meta['transformers']}, {meta['date']}", flush=True)
    t_all = time.perf_counter()
    from sensq.core import format_table, atomic_save_json
    def attempt(name, fn, *args):                                # one failing row does not stop the others
        if name.split('_')[0] in skip: return None
        try: return fn(*args)
        except Exception as e:
            B.add(row=name, error=f"{type(e).__name__}: {str(e)[:200]}"); B.free(); return None
        finally:                                                 # the rows so far survive a timeout
            if a.json: atomic_save_json(a.json, dict(meta=dict(meta, seconds=time.perf_counter() - t_all, partial=True), rows=B.rows))
    m = shaped_llama(B.shape('1b'), dtype=torch.bfloat16, device=B.dev)
    fb1 = attempt('fwd_1b', fwd_bwd, B, m, '1b', list(linear_layers(m))) or float('nan')
    attempt('pqi1b_b1', pqi_row, B, m, '1b_b1', 8, 8, 1, None, reps)
    attempt('pqi1b_b8', pqi_row, B, m, '1b_b8', 8, 8, 8, None, reps)
    attempt('oac_1b', oac_rows, B, m, fb1, 2 if a.quick else 4)
    del m; B.free()
    attempt('gptq_layers', gptq_layers, B, reps)
    if not {'pqi8b', 'offload'} <= skip:
        m = shaped_llama(B.shape('8b'), dtype=torch.bfloat16, device=B.dev)
        sel = [k for k in linear_layers(m) if int(k.split('.')[2]) < a.pqi8b_blocks]
        attempt('fwd_8b', fwd_bwd, B, m, '8b', sel)
        attempt('pqi8b', pqi_row, B, m, '8b', 2, 2, 1, sel, 1)
        if 'offload' not in skip:
            m.to('cpu'); B.free()
            attempt('offload_8b', gptq_offload, B, m, 16 if not a.dry_run else 4, a.offload_blocks)
        del m; B.free()
    meta['seconds'] = time.perf_counter() - t_all
    groups = {}                                                  # one table per kind of row (rows of a kind share columns)
    for r in B.rows: groups.setdefault(r['row'].split('_')[0] + ('_offload' if 'offload' in r['row'] else ''), []).append(r)
    for rows in groups.values():
        cols = list(dict.fromkeys(k for r in rows for k in r))
        print('\n' + format_table(rows, cols))
    print(f"\n{len(B.rows)} rows in {meta['seconds']:.0f} s" + (' (dry run: timings meaningless)' if a.dry_run else ''))
    if a.json: atomic_save_json(a.json, dict(meta=meta, rows=B.rows))
    return 0


if __name__ == '__main__': sys.exit(main())
