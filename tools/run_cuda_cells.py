"""Run the `#| cuda` cells of sensq's notebooks without nbdev or a Jupyter kernel.

`nbdev_test --flags cuda` runs every notebook whole (its CPU cells too) and needs nbdev, execnb and IPython. The GPU
machine has neither, and needs only the GPU checks: this runs, for each notebook, the cells that are nothing but
imports (they give the `#| cuda` cell the names the notebook imported), the notebook's own module
(`from sensq.<default_exp> import *` and its private names), and then its `#| cuda` cells, in order, in one fresh
namespace. The `#| cuda` cells are written to need nothing else (see `nbs/06_devices.ipynb`).

    python tools/run_cuda_cells.py [NOTEBOOK ...]       # default: every notebook with a `#| cuda` cell
    python tools/run_cuda_cells.py --dry-run            # SENSQ_TEST_DEVICE=cpu: the same code paths on the CPU

Without CUDA (and without --dry-run) it says so and exits 0. Exit status 1 when a cell fails.
"""
import argparse, ast, importlib, json, os, sys, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def directives(src: str) -> set:
    "The `#| name` directives of a cell (the first word after `#|`)."
    return {l[2:].strip().split()[0] for l in src.splitlines() if l.startswith('#|') and l[2:].strip()}

def code_cells(nb: Path) -> list:
    return [''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']

def default_exp(cells: list):
    for s in cells:
        for l in s.splitlines():
            if l.startswith('#| default_exp'): return l.split()[-1]
    return None

def imports_only(src: str) -> bool:
    "True for a cell made of import statements alone (directives and comments aside)."
    try: tree = ast.parse(src)
    except SyntaxError: return False
    return bool(tree.body) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body)

def cuda_cells(nb: Path) -> list:
    return [s for s in code_cells(nb) if 'cuda' in directives(s)]

def dry_runnable(nb: Path) -> bool:
    "Cells that take their device from `sensq.devices` (and can therefore run on the CPU with SENSQ_TEST_DEVICE=cpu)."
    return any('sensq.devices import' in s for s in cuda_cells(nb))

def notebooks_with_cuda(root: Path = ROOT) -> list:
    return sorted(p for p in (root / 'nbs').glob('*.ipynb') if not p.name.startswith('_') and cuda_cells(p))

def run_notebook(nb: Path) -> dict:
    "Run the import cells, the notebook's module and its `#| cuda` cells; returns name, cells, seconds, error (None if all passed), last value."
    cells = code_cells(nb)
    ns = {'__name__': f'cuda_cells_{nb.stem}'}
    t0, err, last = time.perf_counter(), None, None
    cwd = os.getcwd()
    os.chdir(nb.parent)                                       # notebooks run from nbs/, as nbdev_test does
    try:
        mod = default_exp(cells)
        for s in cells:
            d = directives(s)
            if imports_only(s) and not d & {'cuda', 'slow', 'eval:'}: exec(compile(s, f'{nb.name}:imports', 'exec'), ns)
        if mod:
            m = importlib.import_module(f'sensq.{mod}')
            ns.update({k: v for k, v in vars(m).items() if not k.startswith('__')})
        for i, s in enumerate(cuda_cells(nb)):
            print(f"  {nb.name} cuda cell {i}: started at {time.perf_counter() - t0:.1f} s", flush=True)   # progress, for a timed-out run
            tree = ast.parse(s)
            if tree.body and isinstance(tree.body[-1], ast.Expr):   # the cell's displayed value, as a notebook shows it
                body, tail = ast.Module(tree.body[:-1], []), ast.Expression(tree.body[-1].value)
                exec(compile(body, f'{nb.name}:cuda{i}', 'exec'), ns)
                last = eval(compile(tail, f'{nb.name}:cuda{i}', 'eval'), ns)
            else: exec(compile(tree, f'{nb.name}:cuda{i}', 'exec'), ns)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt): raise
        err = ''.join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
    finally: os.chdir(cwd)
    return dict(notebook=nb.name, cells=len(cuda_cells(nb)), seconds=round(time.perf_counter() - t0, 2), error=err,
                value=None if last is None else repr(last)[:2000])

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('notebooks', nargs='*', help='notebooks (default: every one with a #| cuda cell)')
    p.add_argument('--dry-run', action='store_true', help='run on the CPU (SENSQ_TEST_DEVICE=cpu): code paths only, no check')
    p.add_argument('--json', default=None, help='write the per-notebook results here')
    a = p.parse_args(argv)
    if a.dry_run: os.environ['SENSQ_TEST_DEVICE'] = 'cpu'
    sys.path.insert(0, str(ROOT))
    import torch
    nbs = [p for p in (Path(n).resolve() for n in a.notebooks) if cuda_cells(p)] or ([] if a.notebooks else notebooks_with_cuda())
    if not a.dry_run and not torch.cuda.is_available():
        print(f"CUDA not available: {sum(len(cuda_cells(n)) for n in nbs)} cuda cells in {len(nbs)} notebooks skipped"); return 0
    res = []
    for nb in nbs:
        if a.dry_run and not dry_runnable(nb):
            print(f"skip {nb.name}: its cuda cells name the GPU themselves (no dry run)"); continue
        r = run_notebook(nb); res.append(r)
        print(f"{'ok  ' if r['error'] is None else 'FAIL'} {r['notebook']}: {r['cells']} cell(s), {r['seconds']} s"
              + (f"\n{r['error']}" if r['error'] else f"\n     {r['value']}" if r['value'] else ''), flush=True)
        if a.json: Path(a.json).write_text(json.dumps(res, indent=1) + '\n')    # the notebooks so far survive a timeout
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1) + '\n')
    failed = [r['notebook'] for r in res if r['error']]
    print(f"{len(res) - len(failed)} passed, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ''))
    return 1 if failed else 0

if __name__ == '__main__': sys.exit(main())
