#!/usr/bin/env python
"""Execute notebooks in place so that their committed outputs (tables, plots) are what the code computes.

Each notebook runs in a fresh Jupyter kernel (this venv's Python, `ipykernel`) whose working directory is the
notebook's folder and whose environment is the one `nbdev_test` and `make test` use (TRITON_INTERPRET=1, offline
hub, this checkout first on PYTHONPATH). Cells flagged with any of `--skip` (default: settings.ini `tst_flags`, i.e.
`slow cuda`) and cells marked `#| eval: false` are not executed and keep whatever outputs they have, exactly the
cells `nbdev_test` leaves out. Plots are saved as PNG (matplotlib's inline backend). The executed notebook is
written atomically over the source (a temporary file in the same folder, then a rename); then `nbdev_clean`
normalises it (settings.ini `clear_all = False`: outputs are kept, execution counts and metadata dropped). A
notebook whose execution fails is left untouched; the partly executed copy is written to a temporary folder and
its path printed.

Usage: python tools/execute_notebooks.py nbs/00a_core.ipynb nbs/01_data.ipynb
       python tools/execute_notebooks.py --all          # every notebook except the studies (`*_study.ipynb`)
       python tools/execute_notebooks.py --skip cuda nbs/03_eval.ipynb   # also run the slow cells
"""
from __future__ import annotations
import argparse, configparser, os, re, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = dict(TRITON_INTERPRET='1', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', TOKENIZERS_PARALLELISM='false',
           # tqdm.auto warns in every kernel without ipywidgets; the outputs would carry that line
           PYTHONWARNINGS='ignore:IProgress not found')

_re_directive = re.compile(r'^\s*#\|\s*(.*?)\s*$')


def directives(source: str) -> dict[str, str]:
    "The leading `#|` lines of a cell as {name: value} (`#| slow` -> {'slow': ''}, `#| eval: false` -> {'eval': 'false'})."
    out = {}
    for line in source.splitlines():
        m = _re_directive.match(line)
        if not m:
            if line.strip(): break
            continue
        body = m.group(1)
        if ':' in body:
            k, v = body.split(':', 1); out[k.strip()] = v.strip().lower()
        else:
            for tok in body.split(): out[tok] = ''
    return out


def skipped(source: str, skip: set[str]) -> bool:
    "Whether `nbdev_test` (with flags `skip` not passed) would leave this code cell out."
    d = directives(source)
    return bool(skip & d.keys()) or d.get('eval') == 'false'


def tst_flags(root: Path = ROOT) -> list[str]:
    "settings.ini `tst_flags` (space-separated)."
    cfg = configparser.ConfigParser(); cfg.read(root/'settings.ini')
    return cfg['DEFAULT'].get('tst_flags', '').split()


def kernel_env(root: Path = ROOT, extra: dict | None = None) -> dict:
    "The environment of the kernel: os.environ plus the test environment, this checkout first on PYTHONPATH."
    env = dict(os.environ, **ENV, **(extra or {}))
    env['PYTHONPATH'] = os.pathsep.join([str(root)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p and p != str(root)])
    return env


def execute(path: Path, out: Path | None = None, skip: set[str] = frozenset(), timeout: int | None = None,
            env: dict | None = None, root: Path = ROOT) -> Path:
    """Execute notebook `path` (cells flagged in `skip` left as they are) and write it atomically to `out` (default:
    in place). Raises `nbclient.exceptions.CellExecutionError` after saving the partial run to a temporary folder."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    class Client(NotebookClient):
        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            if cell.cell_type == 'code' and skipped(cell.source, set(skip)): return cell
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)

    path, out = Path(path).resolve(), Path(out or path).resolve()
    nb = nbformat.read(path, as_version=4)
    # the kernel inherits this process's environment: set it for the duration of the run
    saved, run_env = dict(os.environ), kernel_env(root, env)   # computed before os.environ is cleared
    os.environ.clear(); os.environ.update(run_env)
    try:
        client = Client(nb, timeout=timeout, kernel_name='python3', allow_errors=False,
                        resources={'metadata': {'path': str(path.parent)}})
        try: client.execute()
        except CellExecutionError:
            fail = Path(tempfile.mkdtemp(prefix='sensq-execute-'))/path.name
            nbformat.write(nb, fail)
            print(f'execute_notebooks: {path.name} failed; partly executed copy: {fail}', file=sys.stderr)
            raise
    finally:
        os.environ.clear(); os.environ.update(saved)
    nb.metadata.pop('kernelspec', None); nb.metadata.pop('language_info', None)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f'.{out.name}.', suffix='.tmp')
    os.close(fd)
    try:
        nbformat.write(nb, tmp)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True); raise
    return out


def _umask() -> int:
    m = os.umask(0); os.umask(m); return m


def nbdev_clean(path: Path, root: Path = ROOT):
    "Normalise one notebook with nbdev_clean (outputs kept: settings.ini clear_all = False)."
    r = subprocess.run([str(BIN/'nbdev_clean'), '--fname', str(path)], cwd=root, capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f'nbdev_clean failed on {path}:\n{r.stdout}{r.stderr}')


def default_notebooks(root: Path = ROOT) -> list[Path]:
    "Every documented notebook (nbs/, no `_`/`.` prefix) except the study pages, whose outputs come from tools/run_study.py."
    return sorted(p for p in (root/'nbs').rglob('*.ipynb')
                  if not any(s.startswith(('_', '.')) for s in p.relative_to(root/'nbs').parts) and not p.stem.endswith('_study'))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('notebooks', nargs='*', type=Path)
    ap.add_argument('--all', action='store_true', help='every notebook except the studies')
    ap.add_argument('--skip', default=None, help="space/comma-separated flags whose cells are not run (default: settings.ini tst_flags)")
    ap.add_argument('--timeout', type=int, default=1800, help='seconds per cell')
    ap.add_argument('--no-clean', action='store_true', help='do not run nbdev_clean afterwards')
    a = ap.parse_args(argv)
    nbs = default_notebooks() if a.all else a.notebooks
    if not nbs: ap.error('name notebooks or pass --all')
    missing = [str(p) for p in nbs if not Path(p).is_file()]
    if missing: ap.error(f'no such notebook(s): {missing}')
    skip = set(re.split(r'[\s,]+', a.skip.strip())) - {''} if a.skip is not None else set(tst_flags())
    failed = []
    for p in nbs:
        t = time.perf_counter()
        try: out = execute(Path(p), skip=skip, timeout=a.timeout)
        except Exception as e:
            failed.append(str(p)); print(f'FAILED {p}: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}', flush=True)
            continue
        if not a.no_clean: nbdev_clean(out)
        print(f'executed {p} in {time.perf_counter() - t:.0f} s (skipped cells flagged {sorted(skip) or "none"})', flush=True)
    if failed: sys.exit(f'execute_notebooks: {len(failed)} failed: {failed}')


if __name__ == '__main__': main()
