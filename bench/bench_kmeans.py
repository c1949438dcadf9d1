"""Weighted per-row 1-D k-means (sensq.squeezellm.weighted_kmeans) vs scikit-learn KMeans row by row.

A 4096x4096 fp32 matrix at 3 bits (8 centroids per row), Fisher-like weights. sensq solves all 4096 rows at once;
scikit-learn (what SqueezeLLM's code calls) is run on a sample of rows in the same process, from the same
initialisation (weighted quantiles), the same maximum number of Lloyd updates and tol=0, and the per-row times are
compared. The centroids of the two are compared on the sampled rows too (they should agree to float64 rounding).

    .venv/bin/python bench/bench_kmeans.py [--rows 4096] [--cols 4096] [--bits 3] [--sample 32] [--threads 2]
"""
import argparse, time, platform
import numpy as np
import torch
from sensq.core import format_table, peak_rss_gb
from sensq.squeezellm import weighted_kmeans, lloyd_1d, weighted_quantiles

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--rows', type=int, default=4096); p.add_argument('--cols', type=int, default=4096)
    p.add_argument('--bits', type=int, default=3); p.add_argument('--sample', type=int, default=32)
    p.add_argument('--n_iter', type=int, default=100); p.add_argument('--threads', type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from threadpoolctl import threadpool_limits
    from sklearn.cluster import KMeans
    g = torch.Generator().manual_seed(0)
    W = torch.randn(a.rows, a.cols, generator=g) * 0.02 * (1 + torch.rand(a.rows, 1, generator=g))
    W += 0.01 * torch.randn(a.rows, a.cols, generator=g).pow(3)          # heavy tails, like LLM weights
    f = torch.rand(a.rows, a.cols, generator=g).pow(3) * 1e-6            # Fisher-like: skewed, tiny
    k = 2 ** a.bits
    rows = []
    # 1) the library entry point (init quantile + kmeans++, fp16 codebook, RTN guard)
    t = time.perf_counter(); ct, st = weighted_kmeans(W, f, a.bits, init=('quantile', 'kmeans++'), n_iter=a.n_iter); t_full = time.perf_counter() - t
    rows.append(dict(what='sensq weighted_kmeans (2 starts, fp16 codebook, RTN guard)', rows=a.rows, seconds=t_full, ms_per_row=1e3 * t_full / a.rows))
    # 2) the Lloyd core alone, one start (what scikit-learn does per call)
    t = time.perf_counter(); init = weighted_quantiles(W, f, k); c, done = lloyd_1d(W, f, init, a.n_iter); t_core = time.perf_counter() - t
    rows.append(dict(what=f'sensq lloyd_1d, quantile start ({done} updates)', rows=a.rows, seconds=t_core, ms_per_row=1e3 * t_core / a.rows))
    # 3) scikit-learn, row by row, same start, same max updates, tol=0
    idx = torch.randperm(a.rows, generator=g)[:a.sample].tolist()
    diffs, t_sk = [], 0.0
    with threadpool_limits(a.threads):
        for r in idx:
            x = W[r].double().numpy()[:, None]; w = f[r].double().numpy()
            t = time.perf_counter()
            km = KMeans(k, init=init[r].numpy()[:, None], n_init=1, max_iter=a.n_iter, tol=0.0, algorithm='lloyd').fit(x, sample_weight=w)
            t_sk += time.perf_counter() - t
            diffs.append(float(np.abs(np.sort(km.cluster_centers_[:, 0]) - c[r].numpy()).max() / np.abs(c[r].numpy()).max()))
    rows.append(dict(what=f'sklearn KMeans per row (same start, tol=0), {a.sample} sampled rows', rows=a.sample, seconds=t_sk, ms_per_row=1e3 * t_sk / a.sample))
    # 4) scikit-learn as SqueezeLLM calls it: default k-means++ init (n_init='auto' = 1 run), max_iter=50
    t_sq = 0.0
    with threadpool_limits(a.threads):
        for r in idx:
            x = W[r].double().numpy()[:, None]; w = f[r].double().numpy()
            t = time.perf_counter(); KMeans(k, random_state=0, n_init='auto', max_iter=50).fit(x, sample_weight=w); t_sq += time.perf_counter() - t
    rows.append(dict(what=f'sklearn KMeans per row, SqueezeLLM settings (k-means++, max_iter=50), {a.sample} rows', rows=a.sample, seconds=t_sq, ms_per_row=1e3 * t_sq / a.sample))
    for r in rows: r['speedup_vs_sensq_full'] = r['ms_per_row'] / rows[0]['ms_per_row']
    print(f"# weighted k-means {a.rows}x{a.cols}, {a.bits} bits, {a.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(format_table(rows, floatfmt='.4g'))
    print(f"\nper-row speed-up, sensq full entry point vs sklearn (same start): {rows[2]['ms_per_row'] / rows[0]['ms_per_row']:.1f}x; "
          f"vs sklearn SqueezeLLM settings: {rows[3]['ms_per_row'] / rows[0]['ms_per_row']:.1f}x; "
          f"Lloyd core vs sklearn same start: {rows[2]['ms_per_row'] / rows[1]['ms_per_row']:.1f}x")
    print(f"max relative centroid difference sensq vs sklearn on the sampled rows: {max(diffs):.2e}; peak RSS {peak_rss_gb():.2f} GB")

if __name__ == '__main__': main()
