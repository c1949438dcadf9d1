"End-to-end tests of the `sensq` command on a tiny model folder (subprocesses, as a user runs it)."
import json, os, subprocess, sys
from pathlib import Path
import pytest
from sensq.cli import _tiny_fixture_dir

SENSQ = [sys.executable, '-c', 'from sensq.cli import main; main()']
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'TRITON_INTERPRET': '1'}

class Result:
    def __init__(self, returncode, stdout, stderr): self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

def run(*args, ok=True):
    "Run `sensq ARGS` in this process (as the console script does), returning exit code and output."
    import io, contextlib
    from sensq.cli import main
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv = sys.argv
    sys.argv = ['sensq'] + [str(a) for a in args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int) and e.code is not None: err.write(str(e.code))
    finally: sys.argv = argv
    r = Result(code, out.getvalue(), err.getvalue())
    if ok: assert r.returncode == 0, r.stdout + r.stderr
    else: assert r.returncode != 0, r.stdout + r.stderr
    return r

def test_console_script_subprocess():
    "The installed entry point runs in a fresh process."
    r = subprocess.run(SENSQ + ['--help'], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0 and 'quantize' in r.stdout, r.stderr

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return _tiny_fixture_dir(tmp_path_factory.mktemp('m') / 'tiny')

def test_help_lists_commands():
    out = run('--help').stdout
    for cmd in ('eval', 'quantize', 'demo', 'sensitivity'): assert cmd in out
    assert '--bits' in run('quantize', '--help').stdout

def test_unknown_command():
    assert "unknown command 'frobnicate'" in run('frobnicate', ok=False).stderr

def test_eval_writes_json(tiny, tmp_path):
    out = tmp_path / 'r' / 'eval.json'
    r = run('eval', '--model', tiny, '--seqlen', 64, '--max_windows', 3, '--out', out, '--quiet')
    res = json.loads(out.read_text())[0]
    assert res['windows'] == 3 and res['seqlen'] == 64 and res['ppl'] > 1
    assert f"{res['ppl']:.4g}" in r.stdout
    assert [p.name for p in out.parent.iterdir()] == ['eval.json']  # no temp file left behind

def test_quantize_save_then_eval(tiny, tmp_path):
    q = run('quantize', '--model', tiny, '--method', 'rtn', '--bits', 2, '--group', 16, '--seqlen', 64,
            '--eval_windows', 2, '--save', tmp_path / 'q2', '--out', tmp_path / 'q.json', '--quiet')
    row = json.loads((tmp_path / 'q.json').read_text())[0]
    assert row['method'] == 'rtn' and row['spec'] == 'w2g16a'
    assert json.loads((tmp_path / 'q2' / 'sensq_quant.json').read_text())['ppl'] == pytest.approx(row['ppl'])
    ev = run('eval', '--model', tmp_path / 'q2', '--seqlen', 64, '--max_windows', 2, '--out', tmp_path / 'e.json', '--quiet')
    assert json.loads((tmp_path / 'e.json').read_text())[0]['ppl'] == pytest.approx(row['ppl'], rel=1e-5)

def test_quantize_gptq_runs(tiny, tmp_path):
    run('quantize', '--model', tiny, '--method', 'gptq', '--bits', 3, '--group', 16, '--n_calib', 4, '--seqlen', 64,
        '--eval_windows', 1, '--out', tmp_path / 'g.json', '--quiet')
    row = json.loads((tmp_path / 'g.json').read_text())[0]
    assert row['method'] == 'gptq' and 3 < row['bits_per_weight'] < 6

@pytest.mark.parametrize('args, message', [
    (['quantize', '--bits', 9], 'bits'),
    (['quantize', '--bits', 3, '--group', -4], 'group_size'),
    (['quantize', '--method', 'awq'], "unknown method 'awq'"),
    (['eval', '--model', '/no/such/model'], 'not found'),
    (['eval', '--model', 'no-such-org/no-such-model'], 'HF_HUB_OFFLINE'),
    (['eval', '--text', 'nosuchdataset'], 'nosuchdataset'),
    (['eval', '--seqlen', 10**7], 'too short'),
])
def test_bad_input_clear_error(tiny, args, message):
    if '--model' not in args: args = args + ['--model', tiny]
    r = run(*args, '--quiet', ok=False)
    assert message in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr
