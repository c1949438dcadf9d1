"""tools/run_study.py: finding a study, adding rows from a second process (`--rows`), listing the cache (`--status`),
and the full run replaying the rows."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO/'tools'/'run_study.py'


def _run(*args, cache, timeout=900):
    env = dict(os.environ, SENSQ_CACHE=str(cache), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('args, msg', [
    (['36_lowbit_study', '--fresh', '--rows', 'x'], 'start a run with --fresh first'),
    (['36_lowbit_study', '--no-cache', '--rows', 'x'], 'start a run with --fresh first'),
    (['36_lowbit_study', '34_ds_study', '--rows', 'x'], '--rows takes one study'),
    (['36_lowbit_study', '--rows', 'x', '--out', '/tmp/x.ipynb'], 'writes no notebook'),
    (['13_study', '--rows', 'x'], "13_study has no '## Running every row' heading"),
    (['36_lowbit_study', '--rows', '  '], '--rows got no code'),
    (['99_nothing'], 'no single study notebook'),
    (['36_lowbit_study', '--status', '--rows', 'x'], '--status runs nothing'),
    (['36_lowbit_study', '--verify', 'x', '--rows', 'x'], '--verify runs its own rows'),
    (['36_lowbit_study', '--verify', 'x', '--resume'], 'not with --fresh, --resume or --no-cache'),
    (['36_lowbit_study', '--verify', 'x', '--out', '/tmp/x.ipynb'], '--verify writes no notebook'),
    (['36_lowbit_study', '34_ds_study', '--verify', 'x'], '--verify takes one study'),
    (['36_lowbit_study', '--verify', 'x', '--tol', '-1'], '--tol must be >= 0'),
    (['36_lowbit_study', '--verify', ' '], '--verify got no code'),
])
def test_bad_arguments(tmp_path, args, msg):
    r = _run(*args, cache=tmp_path)
    assert r.returncode != 0 and msg in r.stderr + r.stdout, r.stderr
    assert not (tmp_path/'studies').exists() or not any((tmp_path/'studies').rglob('*.pt')), 'nothing computed'


def _summary(nb_path):
    cells = json.loads(Path(nb_path).read_text())['cells']
    texts = [''.join(o.get('text', '')) for c in cells if c['cell_type'] == 'code' for o in c.get('outputs', [])]
    return [line for t in texts for line in t.splitlines() if line.startswith('study 36_lowbit_study')]


def test_rows_land_under_the_keys_of_the_full_run(tmp_path):
    "Rows computed by `--rows` (a plain Python process) are replayed by the notebook's own run (a Jupyter kernel)."
    cache = tmp_path/'cache'
    r = _run('36_lowbit_study', '--quick', '--rows', "run_row(2, 'rtn', False, 'none')", cache=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'w2-rtn-plain-none' in r.stdout and '2 rows computed, none replayed' in r.stdout      # fp32 and the row
    rows = sorted(p.name for p in (cache/'studies'/'36_lowbit_study').glob('*.pt'))
    assert len(rows) == 2
    r = _run('36_lowbit_study', '--quick', '--rows', "run_row(2, 'rtn', False, 'none')", cache=cache)
    assert r.returncode == 0 and '0 rows computed, 2 replayed' in r.stdout, r.stdout[-2000:]
    assert sorted(p.name for p in (cache/'studies'/'36_lowbit_study').glob('*.pt')) == rows, 'a replay writes nothing'
    r = _run('36_lowbit_study', '--quick', '--status', cache=cache)                        # lists them, runs nothing
    assert r.returncode == 0 and '2 cached rows, 2 current' in r.stdout, r.stdout + r.stderr
    assert sorted(l.split()[-1] for l in r.stdout.splitlines()[1:3]) == ['fp32', 'w2-rtn-plain-none']
    r = _run('36_lowbit_study', '--quick', '--resume', '--status', cache=cache)
    assert r.returncode != 0 and 'no --fresh run to resume' in r.stderr + r.stdout
    out, committed = tmp_path/'q.ipynb', (REPO/'nbs'/'36_lowbit_study.ipynb').read_bytes()
    r = _run('36_lowbit_study', '--quick', '--out', str(out), cache=cache)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summ = _summary(out)
    assert summ and ', 2 replayed from the cache' in summ[-1], summ     # the kernel saw $SENSQ_CACHE and the same keys
    assert (REPO/'nbs'/'36_lowbit_study.ipynb').read_bytes() == committed, 'a reduced configuration never writes the committed page'


def test_verify_recomputes_and_compares_with_the_stored_rows(tmp_path):
    "`--verify` recomputes rows, writes nothing, passes where they match what is stored and fails where none is stored."
    cache = tmp_path/'cache'
    assert _run('36_lowbit_study', '--quick', '--rows', "run_row(2, 'rtn', False, 'none')", cache=cache).returncode == 0
    stored = {p.name: p.read_bytes() for p in (cache/'studies'/'36_lowbit_study').glob('*.pt')}
    r = _run('36_lowbit_study', '--quick', '--verify', "run_row(2, 'rtn', False, 'none')", cache=cache)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '2 rows recomputed, each within 0.001 of its stored result' in r.stdout, r.stdout[-2000:]
    table = [l for l in r.stdout.splitlines() if l.startswith('| fp32') or l.startswith('| w2-rtn-plain-none')]
    assert len(table) == 2 and all(l.rstrip(' |').endswith('yes') for l in table), table
    r = _run('36_lowbit_study', '--quick', '--verify', "run_row(2, 'rtn', False, 'alg1')", cache=cache)
    assert r.returncode != 0 and 'NO: no stored row of this name' in r.stdout, r.stdout[-2000:]
    assert 'has none stored' in r.stderr, r.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in (cache/'studies'/'36_lowbit_study').glob('*.pt')} == stored, 'verify writes nothing'


def test_studies_run_with_avx2_kernels():
    "A study computes with the AVX2 kernels on any x86-64 CPU (AVX-512 ones round differently), unless told otherwise."
    import platform
    if platform.machine().lower() not in ('x86_64', 'amd64'): pytest.skip('the pin applies to x86-64 only')
    code = ("import runpy, sys; sys.argv = ['run_study']; runpy.run_path(%r, run_name='x'); "
            "import torch; print(torch.backends.cpu.get_cpu_capability())") % str(TOOL)
    env = {k: v for k, v in os.environ.items() if k != 'ATEN_CPU_CAPABILITY'}
    got = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split()[-1] in ('AVX2', 'DEFAULT'), got.stdout   # DEFAULT: a CPU without AVX2
    env['ATEN_CPU_CAPABILITY'] = 'default'                                 # an explicit choice is kept
    got = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert got.stdout.split()[-1] == 'DEFAULT', got.stdout + got.stderr
    from sensq.study import env_versions
    assert env_versions()['cpu_capability'] == __import__('torch').backends.cpu.get_cpu_capability()
