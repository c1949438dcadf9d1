#!/usr/bin/env python
"""Re-run a study notebook end to end (every cell, `#| slow` included) and save its outputs.

A study (`nbs/*_study.ipynb`) caches each row under a hash of the code and configuration that produced it
(`sensq.study`, cache under `sensq.models.cache_root()/studies/`). `--fresh` computes every row again (what
`make studies` runs: the outputs are re-created from the commit alone); `--resume` continues the last `--fresh` run
of the study where it stopped (rows computed since that run started are replayed, older ones recomputed: a study of
hours can span sessions); the default reuses rows that the same code already computed on the same configuration;
`--no-cache` neither reads nor writes the cache. The study's claims
cell fails the run when the outputs contradict its prose.

The reference configuration writes the executed notebook over the committed one (atomically, then `nbdev_clean`);
`--quick` (the study's own reduced configuration: tiny random model, a few windows) or `--set key=value` overrides
write to `--out` (default: a temporary folder), never over the committed notebook. A failed run leaves the committed
notebook untouched and prints where the partly executed copy is.

`--rows` adds rows to a run from a second process (a study of hours on a machine with spare cores): it executes the
study's code cells that come before its `## Running every row` heading (setup, configuration, the row function: the
same definitions, so every row lands in the cache under the key the full run gives it) in this Python process, then
the given code (row calls), and writes no notebook. The full run (`--resume`) then replays those rows.

`--verify` checks committed rows against a re-run: it recomputes the given rows (and the rows the study's definition
cells compute, such as full precision) on this machine, stores nothing, and compares each result with the one stored
under the same key (same code, configuration, setup, library versions and CPU kernels), field by field; it prints a
table of the largest relative difference per row and fails when one exceeds `--tol` or a row has no stored result
(saying which part of the key differs: other code, other versions, another CPU's kernels). Rows are called as the
full run calls them: in 36, a 'both' row after its 'alg1' row (its key records that it reused those curves). Each
stored row records the CPU it was computed on: rows reproduce to the last digit on the same CPU family, not across
vendors (36_lowbit_study: Intel against AMD moves GPTQ rows by up to 14%, RTN rows by 1e-7).

`--status` lists the rows in a study's cache without running anything: when each was computed, in how many seconds,
and whether the current code (the import closure the row hashed) and package versions would replay it; with
`--resume`, also whether it was computed since the last `--fresh` run started. (The setup — model weights, calibration,
configuration — is part of each key too; it is checked when the study runs.)

Every study runs with PyTorch's AVX2 CPU kernels on x86-64 (`ATEN_CPU_CAPABILITY=avx2` unless it is set): the same
code rounds differently with the AVX-512 kernels, enough to move a broken 2-bit model's perplexity by tens of percent,
so the committed outputs are re-computed the same on AVX2 and AVX-512 machines. The row cache records the capability
(`sensq.study.env_versions`). A study of many hours can keep its cache in the repository: `SENSQ_CACHE=study_cache`
(the folder git tracks `studies/` of), so that rows computed in one session are replayed on another machine.

Usage: python tools/run_study.py 23_hessian_study [--fresh | --resume | --no-cache] [--quick | --set n_cal=2 ...] [--out PATH]
       python tools/run_study.py --fresh 13_study 23_hessian_study 34_ds_study     # make studies
       python tools/run_study.py 36_lowbit_study --resume --status
       SENSQ_CACHE=study_cache python tools/run_study.py 36_lowbit_study --verify "run_row(3, 'gptq', True, 'none')"
       python tools/run_study.py 36_lowbit_study --resume --rows "run_row(2, 'gptq', True, 'alg1'); run_row(3, 'awq', False, 'alg2')"
"""
from __future__ import annotations
import argparse, datetime, hashlib, json, os, platform, sys, tempfile, time
from pathlib import Path

if platform.machine().lower() in ('x86_64', 'amd64'):   # before anything imports torch (--rows runs the study in this process)
    os.environ.setdefault('ATEN_CPU_CAPABILITY', 'avx2')

sys.path.insert(0, str(Path(__file__).resolve().parent))
from execute_notebooks import ROOT, ENV, directives, execute, nbdev_clean  # noqa: E402

ROWS_HEADING = '## Running every row'


def study_path(name: str) -> Path:
    "nbs/<name>.ipynb for a name like '23_hessian_study', '23' or a path."
    p = Path(name)
    if p.suffix == '.ipynb' and p.is_file(): return p.resolve()
    cands = sorted((ROOT/'nbs').glob(f'{name}*.ipynb')) if name.isdigit() else [ROOT/'nbs'/f'{p.stem}.ipynb']
    cands = [c for c in cands if c.is_file() and c.stem.endswith('_study')]
    if len(cands) != 1:
        have = sorted(c.stem for c in (ROOT/'nbs').glob('*_study.ipynb'))
        raise SystemExit(f'run_study: no single study notebook named {name!r}; studies: {have}')
    return cands[0]


def _study_cache(name: str) -> Path:
    "The study's row cache folder (as `sensq.study.Study` computes it)."
    sys.path.insert(0, str(ROOT))
    from sensq.models import cache_root
    return cache_root()/'studies'/name


def definition_cells(path: Path) -> list[str]:
    "Sources of the study's code cells before its `## Running every row` heading (cells marked `#| eval: false` left out)."
    import nbformat
    cells = []
    for c in nbformat.read(path, as_version=4).cells:
        if c.cell_type == 'markdown' and c.source.lstrip().startswith(ROWS_HEADING): return cells
        if c.cell_type == 'code' and directives(c.source).get('eval') != 'false': cells.append(c.source)
    raise SystemExit(f"run_study: {path.stem} has no '{ROWS_HEADING}' heading; --rows runs the cells that define its rows, "
                     "which come before it")


def run_rows(path: Path, code: str, mode: str, config: str, tol: float = 1e-3) -> dict:
    "Execute the study's definition cells, then `code` (row calls: `run_row(...); run_row(...)`); returns the namespace."
    if not code.strip(): raise SystemExit(f"run_study: {'--verify' if mode == 'verify' else '--rows'} got no code")
    cells = definition_cells(path)
    os.environ.update(ENV, SENSQ_STUDY_MODE=mode, SENSQ_STUDY_CONFIG=config, MPLBACKEND='Agg')
    os.chdir(path.parent)  # where the notebook's kernel runs
    from IPython.display import display
    ns = {'__name__': '__main__', 'display': display}
    for i, src in enumerate(cells): exec(compile(src, f'<{path.stem}: definition cell {i}>', 'exec'), ns)
    exec(compile(code, '<--rows>', 'exec'), ns)
    study = ns.get('STUDY')
    if study is not None and hasattr(study, 'summary'): print(study.summary(), flush=True)
    if mode == 'verify':
        if study is None: raise SystemExit(f'run_study: {path.stem} defines no STUDY to verify')
        table, ok = study.verify_report(tol)
        print(table, flush=True)
        if not ok: raise SystemExit(f'run_study: {path.stem}: a recomputed row differs from its stored result by more than '
                                    f'{tol:g} (relative), or has none stored')
        print(f'run_study: {path.stem}: {len(study.verified)} rows recomputed, each within {tol:g} of its stored result', flush=True)
    return ns


def cache_status(name: str, since: str | None = None) -> list[dict]:
    "Every row cached for study `name`, oldest first: row, computed_at, seconds, state ('current', 'older code', ...)."
    import datetime as dt, torch
    from sensq.study import code_fingerprint, env_versions
    env, fps, out = env_versions(), {}, []
    t0 = dt.datetime.fromisoformat(since) if since else None
    for f in _study_cache(name).glob('*.pt'):
        try: rec = torch.load(f, weights_only=False)
        except Exception as e:
            out.append(dict(row=f.name, computed_at='', seconds=0.0, state=f'unreadable ({type(e).__name__})', setup='')); continue
        parts = rec.get('parts', {}) if isinstance(rec, dict) else {}
        code = parts.get('code') or {}
        k = tuple(sorted(code))
        if k not in fps: fps[k] = code_fingerprint(list(k)) if k else {}
        state = ('older code' if fps[k] != code else 'other versions' if parts.get('env') != env
                 else 'before the run' if t0 and dt.datetime.fromisoformat(rec['computed_at']) < t0 else 'current')
        out.append(dict(row=parts.get('row', f.name), computed_at=rec.get('computed_at', ''), seconds=float(rec.get('seconds', 0)),
                        state=state, setup=str(parts.get('setup', ''))[:8]))
    return sorted(out, key=lambda r: r['computed_at'])


def print_status(name: str, since: str | None = None):
    rows = cache_status(name, since)
    print(f"{'computed at':26s} {'minutes':>11s}  {'state':15s} {'setup':8s} row   (setup: model, calibration and configuration; "
          "one per configuration run)")
    for r in rows: print(f"{r['computed_at']:26s} {r['seconds'] / 60:7.1f} min  {r['state']:15s} {r['setup']:8s} {r['row']}")
    cur = [r for r in rows if r['state'] == 'current']
    by_setup = {}
    for r in cur: by_setup.setdefault(r['setup'], []).append(r)
    print(f"run_study: {name}: {len(rows)} cached rows, {len(cur)} current"
          + (' (' + '; '.join(f"setup {k}: {len(v)} rows, {sum(r['seconds'] for r in v) / 3600:.1f} h of computing"
                              for k, v in by_setup.items()) + ')' if cur else '')
          + (f" since the run started {since}" if since else ''))


def _value(s: str):
    try: return json.loads(s)
    except ValueError: return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('studies', nargs='+', help='study notebook names, e.g. 23_hessian_study')
    g = ap.add_mutually_exclusive_group()
    g.add_argument('--fresh', action='store_true', help='compute every row again (and store it)')
    g.add_argument('--resume', action='store_true', help='continue the last --fresh run: replay rows computed since it started')
    g.add_argument('--no-cache', action='store_true', help='neither read nor write the row cache')
    ap.add_argument('--quick', action='store_true', help="the study's reduced configuration (tiny model), claims not checked")
    ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                    help='override one setting of the study (JSON value), e.g. --set n_cal=2 --set \'bits=[3]\'')
    ap.add_argument('--out', type=Path, help='where to write the executed notebook (default: in place for the reference '
                                            'configuration, a temporary folder otherwise)')
    ap.add_argument('--timeout', type=int, default=None, help='seconds per cell (default: none)')
    ap.add_argument('--verify', metavar='CODE', help="recompute these rows (row calls, as for --rows) without the cache and "
                    "compare each with its stored result; fails beyond --tol")
    ap.add_argument('--tol', type=float, default=1e-3, help='--verify: largest relative difference allowed (default 1e-3)')
    ap.add_argument('--status', action='store_true', help="list the study's cached rows and whether this code replays them; runs nothing")
    ap.add_argument('--rows', metavar='CODE', help="compute only these rows (Python: row calls such as "
                    "\"run_row(2, 'gptq', True, 'alg1'); run_row(...)\") after the study's definition cells, in this process; "
                    "no notebook is written")
    a = ap.parse_args(argv)
    if a.quick and a.set: ap.error('--quick and --set are exclusive')
    if a.status and (a.rows is not None or a.fresh or a.no_cache or a.out): ap.error('--status runs nothing: it takes --resume and --quick/--set only')
    if a.verify is not None:
        if a.rows is not None or a.status: ap.error('--verify runs its own rows: not with --rows or --status')
        if a.fresh or a.resume or a.no_cache: ap.error('--verify compares with every stored row: not with --fresh, --resume or --no-cache')
        if a.out: ap.error('--verify writes no notebook (--out)')
        if len(a.studies) != 1: ap.error('--verify takes one study')
        if not a.tol >= 0: ap.error('--tol must be >= 0')
    if a.rows is not None:
        if len(a.studies) != 1: ap.error('--rows takes one study')
        if a.fresh or a.no_cache: ap.error('--rows adds rows to a run (the default cache or --resume); start a run with --fresh first')
        if a.out: ap.error('--rows writes no notebook (--out)')
    over = {}
    for kv in a.set:
        if '=' not in kv: ap.error(f'--set wants KEY=VALUE, got {kv!r}')
        k, v = kv.split('=', 1); over[k.strip()] = _value(v)
    config = 'quick' if a.quick else json.dumps(over) if over else 'reference'
    paths = [study_path(s) for s in a.studies]
    if a.out and len(paths) > 1: ap.error('--out takes one study')
    failed = []
    for p in paths:
        mode = 'fresh' if a.fresh else 'off' if a.no_cache else 'reuse'
        marker = _study_cache(p.stem)/f'.fresh-start-{hashlib.sha256(config.encode()).hexdigest()[:12]}'  # per configuration
        if a.fresh:  # remembered so that --resume can continue this run
            from sensq.core import atomic_write
            atomic_write(marker, datetime.datetime.now().astimezone().replace(microsecond=0).isoformat() + '\n')
        elif a.resume:
            if not marker.is_file(): raise SystemExit(f'run_study: {p.stem}: no --fresh run to resume ({marker} missing)')
            mode = 'since:' + marker.read_text().strip()
        if a.verify is not None:
            print(f'run_study: {p.stem}: configuration {config}, verifying rows against the cache', flush=True)
            run_rows(p, a.verify, 'verify', config, a.tol); return
        if a.status:
            print_status(p.stem, mode[6:] if mode.startswith('since:') else None); continue
        if a.rows is not None:
            print(f'run_study: {p.stem}: configuration {config}, cache {mode}, rows only', flush=True)
            run_rows(p, a.rows, mode, config); return
        out = a.out or (p if config == 'reference' else Path(tempfile.mkdtemp(prefix='sensq-study-'))/f'{p.stem}.{"quick" if a.quick else "custom"}.ipynb')
        print(f'run_study: {p.stem}: configuration {config}, cache {mode} -> {out}', flush=True)
        t = time.perf_counter()
        try: execute(p, out, skip=set(), timeout=a.timeout, env=dict(SENSQ_STUDY_MODE=mode, SENSQ_STUDY_CONFIG=config))
        except Exception as e:
            failed.append(p.stem); print(f'run_study: {p.stem} FAILED after {(time.perf_counter() - t) / 60:.1f} min: '
                                         f'{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}', flush=True)
            continue
        nbdev_clean(out)
        print(f'run_study: {p.stem} done in {(time.perf_counter() - t) / 60:.1f} min -> {out}', flush=True)
    if failed: sys.exit(f'run_study: failed: {failed}')


if __name__ == '__main__': main()
