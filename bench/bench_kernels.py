"""Benchmark sensq.kernels.packed_linear on Llama shapes against the copy bandwidth, cuBLAS fp16 and PyTorch's int4 kernel.

In one run on one GPU: device-to-device copy bandwidth; for Llama-3-8B (4096x4096, 14336x4096, 4096x14336) and
Llama-3.2-1B (2048x2048, 8192x2048, 2048x8192, 512x2048) weights at batch 1 and 16: the fused kernel's time (median of
`triton.testing.do_bench`, which clears the L2 cache before every call), the TB/s of the bytes it must move (packed
tensors + x + output) and their ratio to the copy bandwidth, the speed-up over `torch.matmul` in fp16 (cuBLAS) and over
`torch._weight_int4pack_mm` (tinygemm, bf16, groups of 128); 4/3/2 bits on the integer-zero grid, the symmetric and
min–max grids at 4 bits, 4/3-bit codebooks; the sparse part's overhead at 0.5% and 1% density, fused and separate
(the separate path's two launches, and its CSR kernel alone);
end to end, `generate()` tokens/s of a random Llama-3.2-1B-shaped model packed at 4 bits against fp16 (batch 1), and
the same decode step replayed as a CUDA graph, and the same model with every layer incoherence-processed (its two
online Hadamard transforms per layer, `sensq.quantlinear.LayerKernels`); per layer, `QuantLinear` at 4 bits with and
without the transform and the input transform alone. Every kernel result is checked against the fp32 spec first.
Kernel times are GPU times (`Timer.gpu`: calls replayed from a CUDA graph, L2 cleared before each) with the time a
Python caller waits per call beside them (`do_bench`), which is host-bound for microsecond kernels.

Usage: python bench/bench_kernels.py [--quick] [--json PATH] [--dry-run]
Without CUDA it prints one line and exits 0. --dry-run runs every code path on tiny shapes in Triton's interpreter,
without timing (numbers print as nan).
"""
import argparse, datetime, math, os, platform, sys, time

DRY = '--dry-run' in sys.argv
if DRY: os.environ['TRITON_INTERPRET'] = '1'      # before triton is imported
import torch

SHAPES_8B = [(4096, 4096), (14336, 4096), (4096, 14336)]
SHAPES_1B = [(2048, 2048), (8192, 2048), (2048, 8192), (512, 2048)]
VARIANTS = [  # (name, bits, grid, group size)
    ('w4 asym g128', 4, 'asym', 128), ('w3 asym g128', 3, 'asym', 128), ('w2 asym g128', 2, 'asym', 128),
    ('w4 sym g128', 4, 'sym', 128), ('w4 minmax g128', 4, 'minmax', 128),
    ('w4 codebook', 4, 'codebook', None), ('w3 codebook', 3, 'codebook', None)]


class Timer:
    """Two times of a call in seconds, or a single untimed call (nan) in a dry run.

    `timer(fn)`: the median of `triton.testing.do_bench` (L2 cleared before each call) — the time a Python caller waits
    per call, host launch overhead included whenever the host is slower than the kernel.
    `timer.gpu(fn)`: the GPU time alone — n calls captured in one CUDA graph, each after a 256 MB L2-clearing write, minus
    a graph of the writes alone, divided by n (median of several replays): what the kernel costs inside a decode step
    that is itself replayed from a graph."""
    def __init__(self, dry, quick):
        self.dry, self.warmup, self.rep = dry, (5 if quick else 25), (25 if quick else 100)
        self.replays, self.flush = (5 if quick else 11), None
    def __call__(self, fn):
        if self.dry:
            fn(); return float('nan')
        from triton.testing import do_bench
        return do_bench(fn, warmup=self.warmup, rep=self.rep, return_mode='median') * 1e-3
    def gpu(self, fn, n=20):
        if self.dry:
            fn(); return float('nan')
        try: return self._gpu(fn, n)
        except Exception as e:                                   # a call that cannot be captured: say so once, time the rest
            if not getattr(self, 'gpu_error', None):
                self.gpu_error = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                print(f"  Timer.gpu failed ({self.gpu_error}); its GPU times are nan", flush=True)
            torch.cuda.synchronize()
            return float('nan')
    def _gpu(self, fn, n):
        if self.flush is None: self.flush = torch.empty(64 << 20, dtype=torch.int32, device='cuda')   # 256 MB > L2
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):                               # warm up on a side stream, as capture requires
            for _ in range(2): fn(); self.flush.zero_()
        torch.cuda.current_stream().wait_stream(s)
        def capture(with_fn):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(n):
                    self.flush.zero_()
                    if with_fn: fn()
            return g
        def median_replay(g):
            ts = []
            for _ in range(self.replays):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record(); g.replay(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
            return sorted(ts)[len(ts) // 2] * 1e-3
        g1, g0 = capture(True), capture(False)
        t = (median_replay(g1) - median_replay(g0)) / n
        del g1, g0
        return t


def copy_bandwidth(timer, dev, nbytes):
    "Device-to-device copy bandwidth in bytes/s (bytes read + bytes written)."
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    return 2 * nbytes / timer(lambda: dst.copy_(src))


def rel_err(y, ref):
    return float((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def tinygemm_weight(pw, dev):
    """PyTorch's int4 layout for a 4-bit asym weight: (packed int4, bf16 scales-and-zeros), same dequantized values.
    Returns (None, note) where the op or this layout is unavailable."""
    from sensq.pack import unpack_codes
    if not (hasattr(torch, '_weight_int4pack_mm') and hasattr(torch, '_convert_weight_to_int4pack')):
        return None, f"torch {torch.__version__} has no _weight_int4pack_mm"
    if dev.type != 'cuda': return None, "tinygemm needs CUDA"
    c, t = pw.config, pw.tensors
    N, K, gs = c['out_features'], c['in_features'], c['group_size']
    q = unpack_codes(t['qweight'], 4, K).to(torch.int32)
    z = unpack_codes(t['qzeros'], 4, K // gs).float()
    s = t['scales'].float()
    # tinygemm dequantizes (q - 8) * scale + zero; ours is s (q - z) = (q - 8) s + s (8 - z)
    sz = torch.stack([s, s * (8 - z)], -1).transpose(0, 1).contiguous().to(torch.bfloat16)   # (K/gs, N, 2)
    try:
        w = torch._convert_weight_to_int4pack(((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8).contiguous(), 8)
    except Exception as e:  # older torch took int32 (N, K) codes
        try: w = torch._convert_weight_to_int4pack(q.contiguous(), 8)
        except Exception: return None, f"_convert_weight_to_int4pack failed: {str(e).splitlines()[0][:120]}"
    return (w, sz), None


def kernel_rows(args, timer, dev, copy_bw, shapes, batches):
    from sensq.kernels import random_packed, packed_linear, packed_linear_reference, kernel_weight
    rows, gen = [], torch.Generator(dev).manual_seed(0)
    dt = torch.float16
    for N, K in shapes:
        Wh = torch.randn(N, K, device=dev, dtype=dt, generator=gen) * 0.02
        xs = {M: torch.randn(M, K, device=dev, dtype=dt, generator=gen) for M in batches}
        fp16_t = {M: timer(lambda x=xs[M]: x @ Wh.T) for M in batches}
        fp16_g = {M: timer.gpu(lambda x=xs[M]: x @ Wh.T) for M in batches}
        tg = {}
        for name, bits, grid, gs in (VARIANTS[:1] + [v for v in VARIANTS[1:] if not args.quick or v[0] in ('w3 asym g128', 'w2 asym g128', 'w4 codebook')]):
            pw = random_packed(N, K, bits, grid, gs, device=dev, generator=gen)
            kw = kernel_weight(pw)
            if name == 'w4 asym g128':
                tgw, tg_note = tinygemm_weight(pw, dev)
            for M in batches:
                x = torch.randn(M, K, device=dev, dtype=dt, generator=gen)
                y = packed_linear(x, kw)
                err = rel_err(y, packed_linear_reference(x, pw))
                t, tgpu = timer(lambda: packed_linear(x, kw)), timer.gpu(lambda: packed_linear(x, kw))
                nbytes = kw.nbytes() + x.numel() * 2 + M * N * 2
                row = dict(shape=f"{N}x{K}", batch=M, variant=name, bits_per_w=round(8 * kw.nbytes() / (N * K), 3), gpu_us=tgpu * 1e6,
                           TBps=nbytes / tgpu / 1e12, copy_ratio=nbytes / tgpu / copy_bw, vs_cublas=fp16_g[M] / tgpu,
                           call_us=t * 1e6, vs_cublas_call=fp16_t[M] / t, rel_err=err)
                if name == 'w4 asym g128':
                    if tgw is not None:
                        xb = x.to(torch.bfloat16)
                        try:
                            ytg = torch._weight_int4pack_mm(xb, tgw[0], 128, tgw[1])
                            row['tinygemm_rel_err'] = rel_err(ytg, packed_linear_reference(xb, pw))
                            tg[M] = timer.gpu(lambda: torch._weight_int4pack_mm(xb, tgw[0], 128, tgw[1]))
                            row['tinygemm_gpu_us'], row['vs_tinygemm'] = tg[M] * 1e6, tg[M] / tgpu
                        except Exception as e:
                            row['note'] = f"tinygemm skipped: {str(e).splitlines()[0][:100]}"
                    else:
                        row['note'] = f"tinygemm skipped: {tg_note}"
                row['cublas_fp16_gpu_us'], row['cublas_fp16_call_us'] = fp16_g[M] * 1e6, fp16_t[M] * 1e6
                rows.append(row)
                print(f"  {row['shape']:>11} b{M:<2} {name:<15} GPU {row['gpu_us']:7.1f} us {row['TBps']:6.2f} TB/s "
                      f"{row['copy_ratio']:5.2f} of copy  x{row['vs_cublas']:.2f} cuBLAS; per call {row['call_us']:6.1f} us  err {err:.1e}", flush=True)
            del pw, kw
    return rows


def sparse_rows(args, timer, dev, shapes, batches):
    from sensq.kernels import random_packed, packed_linear, packed_linear_reference, kernel_weight, _launch_sparse
    rows, gen = [], torch.Generator(dev).manual_seed(1)
    for N, K in shapes:
        base = random_packed(N, K, 4, 'asym', 128, device=dev, generator=gen)
        t_dense = {}
        for M in batches:
            x = torch.randn(M, K, device=dev, dtype=torch.float16, generator=gen)
            kwd = kernel_weight(base)
            t_dense[M] = timer.gpu(lambda: packed_linear(x, kwd))
        for density in ((0.005,) if args.quick else (0.005, 0.01)):
            pw = random_packed(N, K, 4, 'asym', 128, density=density, device=dev, generator=gen)
            kw = kernel_weight(pw)
            for M in batches:
                x = torch.randn(M, K, device=dev, dtype=torch.float16, generator=gen)
                ref = packed_linear_reference(x, pw)
                y = packed_linear(x, kw)
                t_csr = timer.gpu(lambda: _launch_sparse(x, kw, y))  # the second launch alone (adds into y again: timing only)
                for mode in ('fused', 'separate'):
                    err = rel_err(packed_linear(x, kw, sparse=mode), ref)
                    t = timer.gpu(lambda: packed_linear(x, kw, sparse=mode))
                    row = dict(shape=f"{N}x{K}", batch=M, density=density, nnz=kw.nnz, mode=mode, gpu_us=t * 1e6, dense_gpu_us=t_dense[M] * 1e6,
                               overhead=t / t_dense[M] - 1, rel_err=err)
                    if mode == 'separate':   # GPU time of the two launches without the host gap between them
                        row['csr_kernel_gpu_us'] = t_csr * 1e6
                        row['overhead_gpu_only'] = t_csr / t_dense[M]
                    rows.append(row)
                    print(f"  {row['shape']:>11} b{M:<2} sparse {density:.3f} {mode:<8} GPU {row['gpu_us']:8.1f} us "
                          f"(dense {row['dense_gpu_us']:.1f}) overhead {row['overhead']:+.1%}  err {err:.1e}", flush=True)
    return rows


def incoherent_rows(args, timer, dev, copy_bw, shapes, batches):
    "QuantLinear at 4 bits (w4 asym g128) without and with an incoherence transform: what the two online transforms cost."
    from sensq.kernels import random_packed
    from sensq.pack import PackedWeight
    from sensq.quantlinear import QuantLinear, triton_forward
    from sensq.incoherence import make_transform, hadamard_transform_triton, random_signs, incoherent_forward
    rows, gen = [], torch.Generator(dev).manual_seed(2)
    for N, K in shapes:
        pw = random_packed(N, K, 4, 'asym', 128, device=dev, generator=gen)
        pwi = PackedWeight(dict(pw.config, transform=make_transform(N, K, [N, K])['transform']), pw.tensors)
        plain, inc = QuantLinear.from_packed(pw), QuantLinear.from_packed(pwi)
        s = random_signs(1, K, dev)
        for M in batches:
            x = torch.randn(M, K, device=dev, dtype=torch.float16, generator=gen)
            err = rel_err(triton_forward(inc, x), incoherent_forward(x.double(), pwi))   # float64 torch reference
            t_p, t_i = timer.gpu(lambda: triton_forward(plain, x)), timer.gpu(lambda: triton_forward(inc, x))
            t_h = timer.gpu(lambda: hadamard_transform_triton(x, True, pre=s))
            c_p, c_i = timer(lambda: triton_forward(plain, x)), timer(lambda: triton_forward(inc, x))
            row = dict(shape=f"{N}x{K}", batch=M, had_in=str(pwi.config['transform']['had_in']), plain_gpu_us=t_p * 1e6,
                       incoherent_gpu_us=t_i * 1e6, overhead=t_i / t_p - 1, hadamard_in_gpu_us=t_h * 1e6,
                       plain_call_us=c_p * 1e6, incoherent_call_us=c_i * 1e6, rel_err=err)
            rows.append(row)
            print(f"  {row['shape']:>11} b{M:<2} GPU w4 {row['plain_gpu_us']:7.1f} us, incoherent {row['incoherent_gpu_us']:7.1f} us "
                  f"({row['overhead']:+.0%}), input transform {row['hadamard_in_gpu_us']:.1f} us; per call {c_p * 1e6:.1f} / {c_i * 1e6:.1f} us  err {err:.1e}", flush=True)
    return rows


def pack_linear(lin, bits=4, group_size=128):
    "RTN-quantize an nn.Linear on sensq's integer-zero grid and pack it (layout of sensq.pack)."
    from sensq.quant import QuantSpec, quantize
    from sensq.pack import PackedWeight, pack_codes
    W = lin.weight.detach().float()
    qt = quantize(W, QuantSpec(bits, group_size))
    N, K = W.shape
    t = dict(qweight=pack_codes(qt.codes, bits), scales=qt.scale.half(), qzeros=pack_codes(qt.zero.round().long(), bits))
    return PackedWeight(dict(version=1, grid='asym', bits=bits, group_size=group_size, in_features=K, out_features=N), t)


def e2e_rows(args, timer, dev):
    "generate() tokens/s of a random Llama-3.2-1B-shaped model, fp16 and packed at 4 bits; and a CUDA-graph decode loop."
    from transformers import LlamaConfig, LlamaForCausalLM
    if args.dry_run:
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          vocab_size=256, max_position_embeddings=256, tie_word_embeddings=True)
        new, dtype = 4, torch.float32
    else:
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                          vocab_size=128256, max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=True)
        new, dtype = (32 if args.quick else 128), torch.float16
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 8), device=dev)
    gen_kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)

    def tok_per_s():
        with torch.no_grad():
            model.generate(prompt, **dict(gen_kw, max_new_tokens=4, min_new_tokens=4))   # warm-up (compiles, tunes)
            if dev.type == 'cuda': torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate(prompt, **gen_kw)
            if dev.type == 'cuda': torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        assert out.shape[1] == prompt.shape[1] + new
        return (new / dt if not args.dry_run else float('nan')), out

    def graph_tok_per_s():
        "Decode steps replayed from a CUDA graph (static cache): the time the kernels take without Python overhead."
        if dev.type != 'cuda': return float('nan'), "CUDA graphs need a GPU"
        try:
            from transformers import StaticCache
            try: cache = StaticCache(config=cfg, max_batch_size=1, max_cache_len=64, device=dev, dtype=dtype)
            except TypeError: cache = StaticCache(config=cfg, max_cache_len=64)
            with torch.no_grad():
                model(prompt, past_key_values=cache, cache_position=torch.arange(8, device=dev), use_cache=True)
                tok = torch.zeros(1, 1, dtype=torch.long, device=dev)
                pos = torch.full((1,), 8, dtype=torch.long, device=dev)
                step = lambda: model(tok, past_key_values=cache, cache_position=pos, use_cache=True).logits
                s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(3): step()
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g): step()
                n = 50
                g.replay(); torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(n): g.replay()
                torch.cuda.synchronize()
                return n / (time.perf_counter() - t0), None
        except Exception as e:
            return float('nan'), f"graph decode skipped: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"

    def greedy_tok_per_s(ref):
        """`sensq.quantlinear.greedy_decode` (static cache, one CUDA-graph replay per token), the library's fast path: tokens/s
        in the steady state, from two whole calls of 8 and 8 + `new` tokens (each call prefills, warms up and captures
        once: that fixed cost cancels); profiled when under half of `ref`, the bare capture loop's rate. Both lengths run
        once untimed first: a static cache of a new length pays first-use costs (attention plans for the new key length)
        that need not cancel in the difference -- a possible reason the 2026-12-04 runs read 43-48 tok/s for plain w4
        (timed first) against 119-273 for the incoherent model, with bare capture loops of 304-409 for both."""
        from sensq.quantlinear import greedy_decode
        def whole(n):
            if dev.type == 'cuda': torch.cuda.synchronize()
            t0 = time.perf_counter()
            greedy_decode(model, prompt, n)
            if dev.type == 'cuda': torch.cuda.synchronize()
            return time.perf_counter() - t0
        def profile(label):
            "Where one whole call's host and GPU time goes (printed to the log): run when the steady state looks slow."
            from torch.profiler import profile as prof, ProfilerActivity
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == 'cuda' else [])
            with prof(activities=acts) as p: whole(8 + new)
            key = 'self_cuda_time_total' if dev.type == 'cuda' else 'self_cpu_time_total'
            print(f"  greedy_decode profile ({label}), by self CPU time:\n"
                  + p.key_averages().table(sort_by='self_cpu_time_total', row_limit=12)
                  + f"\n  by {key}:\n" + p.key_averages().table(sort_by=key, row_limit=8), flush=True)
        try:
            whole(8), whole(8 + new)                                                 # warm-up: both lengths once
            t_short, t_long = whole(8), whole(8 + new)
            rate = new / (t_long - t_short)
            if args.dry_run or rate < 0.5 * ref: profile('dry run' if args.dry_run else f'{rate:.1f} tok/s')
            if args.dry_run: return float('nan'), None
            return rate, f"greedy_decode fixed cost {t_short * 1e3:.0f} ms per call (8 tokens)"
        except Exception as e:
            return float('nan'), f"greedy_decode failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"

    from sensq.pack import PackedWeight
    from sensq.quantlinear import QuantLinear
    rows = []
    tps16, out16 = tok_per_s()
    g16, note16 = graph_tok_per_s()
    nbytes16 = sum(p.numel() * p.element_size() for p in model.parameters())
    layers = model.model.layers
    for layer in layers:
        for parent, names in ((layer.self_attn, ('q_proj', 'k_proj', 'v_proj', 'o_proj')), (layer.mlp, ('gate_proj', 'up_proj', 'down_proj'))):
            for nm in names:
                setattr(parent, nm, QuantLinear.from_packed(pack_linear(getattr(parent, nm))))   # the library's layer and dispatch
    torch.cuda.empty_cache() if dev.type == 'cuda' else None
    tps4, out4 = tok_per_s()
    from sensq import kernels
    kernels.FAST_LAUNCH = False                          # eager generate() with Triton's launch on every call
    try: tps4_triton, _ = tok_per_s()
    finally: kernels.FAST_LAUNCH = True
    g4, note4 = graph_tok_per_s()
    gd4, gdnote4 = greedy_tok_per_s(g4)
    same = float((out4[:, 8:] == out16[:, 8:]).float().mean())
    from sensq.incoherence import make_transform
    for i, layer in enumerate(layers):     # the same codes read as W' in a randomized Hadamard basis: two transforms per layer
        for parent, names in ((layer.self_attn, ('q_proj', 'k_proj', 'v_proj', 'o_proj')), (layer.mlp, ('gate_proj', 'up_proj', 'down_proj'))):
            for j, nm in enumerate(names):
                p = getattr(parent, nm).packed
                t = make_transform(p.config['out_features'], p.config['in_features'], [i, j])['transform']
                setattr(parent, nm, QuantLinear.from_packed(PackedWeight(dict(p.config, transform=t), p.tensors)))
    if dev.type == 'cuda':
        tpsi, _ = tok_per_s()
        gi, notei = graph_tok_per_s()
        gdi, gdnotei = greedy_tok_per_s(gi)
    else: tpsi, gi, notei, gdi, gdnotei = float('nan'), float('nan'), None, float('nan'), None   # torch path on a CPU: nothing to time
    rows.append(dict(model='Llama-3.2-1B shape, random', batch=1, new_tokens=new, fp16_tok_s=tps16, w4_tok_s=tps4, speedup=tps4 / tps16, w4_tok_s_triton_launch=tps4_triton,
                     graph_fp16_tok_s=g16, graph_w4_tok_s=g4, graph_speedup=g4 / g16, same_tokens_frac=same,
                     incoherent_w4_tok_s=tpsi, graph_incoherent_w4_tok_s=gi, greedy_decode_w4_tok_s=gd4, greedy_decode_incoherent_tok_s=gdi,
                     fp16_param_GB=nbytes16 / 1e9, note='; '.join(n for n in (note16, note4, notei, gdnote4, gdnotei) if n)))
    print(f"  generate(): fp16 {tps16:.1f} tok/s, w4 {tps4:.1f} tok/s (x{tps4 / tps16:.2f}; {tps4_triton:.1f} with Triton's launch); CUDA graph: fp16 {g16:.1f}, w4 {g4:.1f} "
          f"(x{g4 / g16:.2f}); greedy tokens equal to fp16's: {same:.0%}; incoherent w4 {tpsi:.1f} tok/s, CUDA graph {gi:.1f} "
          f"greedy_decode w4 {gd4:.1f}, incoherent {gdi:.1f} tok/s {rows[-1]['note']}", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument('--quick', action='store_true', help='fewer shapes, variants and repetitions')
    ap.add_argument('--json', metavar='PATH', help='write all results to this JSON file')
    ap.add_argument('--dry-run', action='store_true', help='tiny shapes in the Triton interpreter, no timing (checks every code path)')
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.dry_run:
        print("bench_kernels: no CUDA device, nothing to measure (use --dry-run to exercise the code paths on CPU)")
        return 0
    import triton
    from sensq.core import format_table, atomic_save_json
    dev = torch.device('cpu' if args.dry_run else 'cuda')
    timer = Timer(args.dry_run, args.quick)
    t_start = time.time()
    if args.dry_run:
        shapes, batches, sparse_shapes, copy_bw = [(32, 64), (48, 256)], [1, 3], [(40, 256)], float('nan')
    else:
        shapes = SHAPES_8B + SHAPES_1B[:2] if args.quick else SHAPES_8B + SHAPES_1B
        batches, sparse_shapes = [1, 16], SHAPES_8B[:2] if args.quick else SHAPES_8B
        copy_bw = copy_bandwidth(timer, dev, 1 << 30)
    name = torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU (Triton interpreter, dry run)'
    print(f"# sensq.kernels bench: {name}; torch {torch.__version__}, triton {triton.__version__}, {platform.node()}, "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}; copy bandwidth {copy_bw / 1e12:.3f} TB/s", flush=True)
    res = dict(device=name, torch=torch.__version__, triton=triton.__version__, date=datetime.datetime.now().isoformat(timespec='seconds'),
               copy_TBps=copy_bw / 1e12, quick=args.quick, dry_run=args.dry_run)
    from sensq import kernels
    save = lambda: atomic_save_json(args.json, dict(res, seconds=time.time() - t_start,
                                                    tuned=[dict(key=str(k), plan=v) for k, v in kernels._TUNED.items()])) if args.json else None
    from sensq.kernels import random_packed, packed_linear, kernel_weight
    ckw = kernel_weight(random_packed(*shapes[0], 4, 'asym', 128, device=dev, generator=torch.Generator(dev).manual_seed(9)))
    cx = torch.randn(1, shapes[0][1], device=dev, dtype=torch.float16)
    res['canary'] = []
    def canary(after):   # the same call timed after each section: does a section change the cost of a call?
        c = dict(after=after, shape=f"{shapes[0][0]}x{shapes[0][1]}", call_us=timer(lambda: packed_linear(cx, ckw)) * 1e6,
                 gpu_us=timer.gpu(lambda: packed_linear(cx, ckw)) * 1e6)
        kernels.FAST_LAUNCH = False                      # the same call through Triton's launch (binder) every time
        try: c['call_us_triton_launch'] = timer(lambda: packed_linear(cx, ckw)) * 1e6
        finally: kernels.FAST_LAUNCH = True
        res['canary'].append(c)
        print(f"  canary (w4 b1 {c['shape']}) after {after}: per call {c['call_us']:.1f} us (Triton's launch "
              f"{c['call_us_triton_launch']:.1f} us), GPU {c['gpu_us']:.1f} us", flush=True)
    canary('start')
    print("## dense kernels", flush=True)
    res['kernels'] = kernel_rows(args, timer, dev, copy_bw, shapes, batches); canary('dense'); save()
    print("## end to end", flush=True)
    try: res['e2e'] = e2e_rows(args, timer, dev)
    except Exception as e:                                   # keep the kernel results when the model part fails
        res['e2e'] = [dict(note=f"end-to-end failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")]
        print(f"  {res['e2e'][0]['note']}", flush=True)
    canary('e2e'); save()
    print("## sparse part", flush=True)
    res['sparse'] = sparse_rows(args, timer, dev, sparse_shapes, batches); canary('sparse'); save()
    print("## incoherence transforms", flush=True)
    try: res['incoherent'] = incoherent_rows(args, timer, dev, copy_bw, shapes[:3] if args.quick else SHAPES_8B + SHAPES_1B[:3] if not args.dry_run else shapes, batches)
    except Exception as e:
        res['incoherent'] = [dict(note=f"incoherent rows failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", rel_err=0.0)]
        print(f"  {res['incoherent'][0]['note']}", flush=True)
    res['seconds'] = time.time() - t_start
    save()
    print()
    print(format_table(res['kernels'], ['shape', 'batch', 'variant', 'bits_per_w', 'gpu_us', 'TBps', 'copy_ratio', 'vs_cublas', 'vs_tinygemm',
                                        'cublas_fp16_gpu_us', 'tinygemm_gpu_us', 'call_us', 'cublas_fp16_call_us', 'rel_err', 'note']))
    print()
    print(format_table(res['sparse'], ['shape', 'batch', 'density', 'mode', 'gpu_us', 'dense_gpu_us', 'overhead', 'csr_kernel_gpu_us', 'overhead_gpu_only', 'rel_err']))
    print()
    print(format_table(res['incoherent'], ['shape', 'batch', 'had_in', 'plain_gpu_us', 'incoherent_gpu_us', 'overhead', 'hadamard_in_gpu_us',
                                           'plain_call_us', 'incoherent_call_us', 'rel_err', 'note']))
    print()
    print(format_table(res['e2e']))
    print()
    print(format_table(res['canary']))
    print(f"\n{res['seconds']:.0f} s")
    bad = [r for r in res['kernels'] + res['sparse'] + res['incoherent'] if not r['rel_err'] < 2e-3]
    if bad: print(f"WARNING: {len(bad)} results differ from the spec by more than 2e-3 (relative Frobenius): {bad[:3]}")
    return 1 if bad else 0


if __name__ == '__main__': sys.exit(main())
