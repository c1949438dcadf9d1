"""Benchmark sensq.quant: round-to-nearest quantize-dequantize of a 4096x4096 weight at a few grids.

Prints a markdown table: eager torch `rtn` (and `quantize`) on CPU; on a CUDA machine also torch `rtn` on the GPU and
the fused Triton kernel `rtn_triton` (checked bit-exact first). Usage: python bench/bench_quant.py [--size N] [--reps R]
"""
import argparse, os, platform, time
import torch
if not torch.cuda.is_available(): os.environ.setdefault("TRITON_INTERPRET", "1")
from sensq.quant import QuantSpec, rtn, quantize, rtn_triton, bits_per_weight

SPECS = [QuantSpec(4, 128), QuantSpec(4, 128, int_zero=False), QuantSpec(3, 128), QuantSpec(2, 64), QuantSpec(4, None), QuantSpec(4, 128, sym=True),
         QuantSpec(8, 32)]  # integer-zero asymmetric (the default, 'a'), min–max ('m'), symmetric ('s')


def best_of(fn, reps):
    "Best wall time of `reps` calls (after one warm-up), in seconds."
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return min(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    W = torch.randn(a.size, a.size)
    nbytes = 2 * W.numel() * W.element_size()  # read W, write W_hat
    cuda = torch.cuda.is_available()
    print(f"# sensq.quant bench: {a.size}x{a.size} float32, best of {a.reps}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          + (f", {torch.cuda.get_device_name()}" if cuda else ", no CUDA (Triton not timed)"))
    cols = ["spec", "bits/w", "cpu rtn s", "cpu GB/s", "cpu quantize s"] + (["cuda rtn ms", "triton ms", "triton GB/s"] if cuda else [])
    print("| " + " | ".join(cols) + " |"); print("|" + "---|" * len(cols))
    for spec in SPECS:
        t = best_of(lambda: rtn(W, spec), a.reps)
        tq = best_of(lambda: quantize(W, spec), a.reps)
        row = [str(spec), f"{bits_per_weight(W.shape, spec):.4f}", f"{t:.3f}", f"{nbytes / t / 1e9:.2f}", f"{tq:.3f}"]
        if cuda:
            from triton.testing import do_bench
            Wc = W.cuda()
            assert torch.equal(rtn_triton(Wc, spec), rtn(Wc, spec)), f"triton != torch for {spec}"
            tc, tt = do_bench(lambda: rtn(Wc, spec)), do_bench(lambda: rtn_triton(Wc, spec))
            row += [f"{tc:.3f}", f"{tt:.3f}", f"{nbytes / tt / 1e6:.0f}"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__": main()
