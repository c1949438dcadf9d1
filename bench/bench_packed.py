"""Benchmark packed sensq checkpoints against the float32 model on the CPU: load time, memory, generate() tokens/s.

For the default model (SmolLM2-135M-Instruct) it writes packed RTN checkpoints at 4, 3 and 2 bits (integer zero point,
fp16 scales, groups of 128/128/64, dense tensors in float16) into a temporary folder, then measures each model —
float32 and packed — in a fresh Python process: `import sensq`, `AutoModelForCausalLM.from_pretrained(DIR)` (load
seconds), the bytes of parameters+buffers (`sensq.quantlinear.model_memory`), the process RSS after
the imports (torch, transformers), after loading and at its peak (safetensors are memory-mapped, so RSS after
loading counts only the pages touched), and greedy `generate()` of batch 1 with exactly `--new-tokens` new tokens (tokens/s, after one warm-up token).
Prints a Markdown table. Packed layers run sensq's reference path (dequantize in torch, then matmul): this measures
the memory the format saves and what the reference path costs, not a kernel.

Usage: python bench/bench_packed.py [--bits 4 3 2] [--new-tokens 128] [--threads N] [--keep DIR]
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

CHILD = r'''
import json, os, sys, time, resource
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[3]))
import sensq
from transformers import AutoModelForCausalLM, AutoTokenizer
from sensq.quantlinear import model_memory, rss_bytes, quant_layers
t_import = time.perf_counter() - t0
rss_import = rss_bytes()
t1 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
t_load = time.perf_counter() - t1
rss_load = rss_bytes()
mem = model_memory(model)
n_new = int(sys.argv[2])
ids = tok.apply_chat_template([{"role": "user", "content": "Explain in a few sentences why the sky is blue."}],
                              add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=tok.eos_token_id)
with torch.no_grad():
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)             # warm-up: first-call allocations
    t2 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, **kw)
    t_gen = time.perf_counter() - t2
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(import_s=t_import, load_s=t_load, mem=mem, rss_import=rss_import, rss_load=rss_load, rss_peak=peak, gen_s=t_gen,
                      new_tokens=int(out.shape[1] - ids.shape[1]), prompt_tokens=int(ids.shape[1]),
                      packed_layers=len(quant_layers(model)),
                      text=tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)[:80])))
'''

ROWS = {4: 128, 3: 128, 2: 64}   # bits -> group size (the demo's RTN rows)


def dir_bytes(d): return sum(p.stat().st_size for p in Path(d).iterdir() if p.is_file())


def write_packed(bits, dest):
    "Pack the default model with RTN at `bits` and write the checkpoint to `dest`; returns the stats."
    import torch
    from sensq.models import load_model
    from sensq.quant import QuantSpec
    from sensq.quantlinear import pack_model, write_packed_checkpoint, _rtn_packed_model
    spec = QuantSpec(bits, ROWS[bits])
    m, tok = load_model('default', progress=False)
    try:                                                    # the methods' own packed result once 40_pack provides it
        from sensq.eval import rtn_quantize_model
        packed = rtn_quantize_model(m, None, spec, pack=True)['packed']
        m, tok = load_model('default', progress=False)
    except TypeError:                                       # until then: sensq.quantlinear's temporary RTN packer
        packed = _rtn_packed_model(m, spec)
    pack_model(m, packed)
    write_packed_checkpoint(m, tok, dest, {'method': 'rtn', 'grid': str(spec), 'bits': bits, 'bench': 'bench_packed'})
    return json.loads((Path(dest) / 'sensq_quant.json').read_text())['stored']


def measure(model_dir, new_tokens, threads):
    env = dict(os.environ, HF_HUB_OFFLINE='1', TOKENIZERS_PARALLELISM='false', OMP_NUM_THREADS=str(threads))
    load0 = os.getloadavg()[0]
    r = subprocess.run([sys.executable, '-c', CHILD, str(model_dir), str(new_tokens), str(threads)],
                       capture_output=True, text=True, env=env)
    if r.returncode: raise RuntimeError(r.stderr[-3000:])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res['load_avg'] = (load0 + os.getloadavg()[0]) / 2
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--bits', type=int, nargs='+', default=[4, 3, 2], choices=sorted(ROWS))
    ap.add_argument('--new-tokens', type=int, default=128)
    ap.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    ap.add_argument('--keep', default=None, help='write the packed checkpoints here (default: a temporary folder, removed)')
    a = ap.parse_args()
    from sensq.models import default_model_dir
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix='sensq-bench-packed-'))
    work.mkdir(parents=True, exist_ok=True)
    variants = [('fp32', default_model_dir(), None)]
    for b in a.bits:
        d = work / f'rtn-w{b}g{ROWS[b]}'
        st = write_packed(b, d) if not d.exists() else json.loads((d / 'sensq_quant.json').read_text())['stored']
        variants.append((f'packed {b}-bit g{ROWS[b]}', d, st))
    print(f"# bench_packed: default model, batch 1, {a.new_tokens} new tokens (greedy), CPU {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {a.threads} threads; {time.strftime('%Y-%m-%d %H:%M')}")
    cols = ['model', 'bits/w (linears)', 'disk MB', 'load s', 'params+buffers MB', 'RSS after imports MB',
            'RSS after load MB', 'peak RSS MB', 'tokens/s', 'load avg']
    print('| ' + ' | '.join(cols) + ' |'); print('|' + '---|' * len(cols))
    texts = []
    for name, d, st in variants:
        r = measure(d, a.new_tokens, a.threads)
        assert r['new_tokens'] == a.new_tokens, r
        bpw = '32' if st is None else f"{st['bits_per_weight']:.3f}"
        row = [name, bpw, f"{dir_bytes(d) / 1e6:.1f}", f"{r['load_s']:.2f}", f"{r['mem']['total'] / 1e6:.1f}",
               f"{r['rss_import'] / 1e6:.0f}", f"{r['rss_load'] / 1e6:.0f}", f"{r['rss_peak'] / 1e6:.0f}", f"{a.new_tokens / r['gen_s']:.2f}", f"{r['load_avg']:.1f}"]
        print('| ' + ' | '.join(row) + ' |', flush=True)
        texts.append((name, r['text']))
    print()
    for name, t in texts: print(f"{name}: {t!r}")
    if not a.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__': main()
