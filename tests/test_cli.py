"End-to-end tests of the `sensq` command on a tiny model folder (as a user runs it), including bad input and user data."
import json, os, shutil, stat, subprocess, sys
from pathlib import Path
import pytest
import torch
import sensq.cli
from sensq import __version__
from sensq.cli import _tiny_fixture_dir
from sensq.core import MARKER_FILE, fmt_num

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

def mode(p): return stat.S_IMODE(os.stat(p).st_mode)

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return _tiny_fixture_dir(tmp_path_factory.mktemp('m') / 'tiny')

@pytest.fixture
def no_load(monkeypatch):
    "Make loading a model fail: a test using it proves that a check ran before any work."
    def fail(*a, **k): raise AssertionError('the model was loaded before the arguments were checked')
    monkeypatch.setattr(sensq.cli, 'load_model', fail)

@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)

def user_folder(path):
    "A folder with files a user cares about."
    (path / 'sub').mkdir(parents=True)
    (path / 'notes.txt').write_text('mine'); (path / 'sub' / 'keep.txt').write_text('mine too')
    return path

def files(path): return sorted(str(p.relative_to(path)) for p in path.rglob('*'))

def one_error_line(r, cmd, starts):
    "The run failed with exit code 2 and one line `sensq <cmd>: error: <starts>...` on stderr, no traceback."
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sensq {cmd}: error: {starts}"), r.stderr
    assert 'Traceback' not in r.stderr and r.stdout == ''
    return lines[0]

# ---------------------------------------------------------------- the commands work

def test_console_script_subprocess():
    "The installed entry point runs in a fresh process."
    r = subprocess.run(SENSQ + ['--help'], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0 and 'quantize' in r.stdout, r.stderr

def test_help_lists_commands_and_version():
    out = run('--help').stdout
    for cmd in ('eval', 'quantize', 'demo', 'sensitivity'): assert f"  {cmd} " in out
    assert '--bits' in run('quantize', '--help').stdout
    assert run('--version').stdout == f"sensq {__version__}\n"

def test_one_flag_family():
    "The same flag names in all four commands; booleans are bare flags."
    helps = {c: run(c, '--help').stdout for c in ('eval', 'quantize', 'demo', 'sensitivity')}
    for c, h in helps.items():
        for flag in ('--model', '--seqlen', '--dtype', '--device', '--out', '--overwrite', '--quiet'): assert flag in h, (c, flag)
        assert '--max_windows' not in h and 'bool_arg' not in h
    for c in ('eval', 'quantize', 'demo'): assert '--eval_windows' in helps[c]

def test_unknown_command():
    r = run('frobnicate', ok=False)
    assert r.returncode == 2 and "sensq: error: unknown command 'frobnicate'" in r.stderr

def test_eval_writes_json_and_protocol_line(tiny, tmp_path):
    out = tmp_path / 'r' / 'eval.json'
    r = run('eval', '--model', tiny, '--seqlen', 64, '--eval_windows', 3, '--out', out, '--quiet')
    res = json.loads(out.read_text())[0]
    assert res['windows'] == 3 and res['seqlen'] == 64 and res['ppl'] > 1 and res['protocol'] == 'default-3x64'
    assert fmt_num(res['ppl']) in r.stdout
    assert 'protocol default-3x64: default text' in r.stdout
    assert [p.name for p in out.parent.iterdir()] == ['eval.json']  # no temp file left behind

def test_quantize_save_then_eval(tiny, tmp_path):
    q = run('quantize', '--model', tiny, '--method', 'rtn', '--bits', 2, '--group', 16, '--seqlen', 64,
            '--eval_windows', 2, '--save', tmp_path / 'q2', '--out', tmp_path / 'q.json', '--quiet')
    row = json.loads((tmp_path / 'q.json').read_text())[0]
    assert row['method'] == 'rtn' and row['spec'] == 'w2g16a'
    assert json.loads((tmp_path / 'q2' / 'sensq_quant.json').read_text())['ppl'] == pytest.approx(row['ppl'])
    assert json.loads((tmp_path / 'q2' / MARKER_FILE).read_text())['writer'] == 'sensq quantize'
    ev = run('eval', '--model', tmp_path / 'q2', '--seqlen', 64, '--eval_windows', 2, '--out', tmp_path / 'e.json', '--quiet')
    assert json.loads((tmp_path / 'e.json').read_text())[0]['ppl'] == pytest.approx(row['ppl'], rel=1e-5)

def test_quantize_gptq_runs(tiny, tmp_path):
    run('quantize', '--model', tiny, '--method', 'gptq', '--bits', 3, '--group', 16, '--n_calib', 4, '--seqlen', 64,
        '--eval_windows', 1, '--device', 'cpu', '--out', tmp_path / 'g.json', '--quiet')
    row = json.loads((tmp_path / 'g.json').read_text())[0]
    assert row['method'] == 'gptq' and 3 < row['bits_per_weight'] < 6

def test_sensitivity_bare_flags(tiny, tmp_path):
    r = run('sensitivity', '--model', tiny, '--metric', 'hessian', '--n_calib', 1, '--seqlen', 32, '--layers', 'v_proj',
            '--no_per_layer', '--sym', '--device', 'cpu', '--out', tmp_path / 'rep', '--quiet')
    assert r.stderr == '' and 'report in' in r.stdout
    assert (tmp_path / 'rep' / MARKER_FILE).is_file()
    bad = run('sensitivity', '--model', tiny, '--quiet', 'true', ok=False)
    assert bad.returncode == 2 and 'unrecognized arguments: true' in bad.stderr

# ---------------------------------------------------------------- output hygiene

def test_quiet_prints_only_results(tiny, tmp_path):
    r = run('quantize', '--model', tiny, '--method', 'gptq', '--bits', 3, '--group', 16, '--n_calib', 2, '--seqlen', 64,
            '--eval_windows', 1, '--quiet')
    assert r.stderr == ''
    lines = r.stdout.splitlines()
    assert lines[0].startswith('| method') and lines[1].startswith('|--') and lines[2].startswith('| gptq')
    assert lines[3].startswith('protocol default-1x64') and len(lines) == 4

def test_progress_bars_on_stderr_with_label(tiny, monkeypatch):
    "With bars shown (a terminal), they go to stderr behind the command's label; stdout keeps the table only."
    import fastprogress.fastprogress as fp
    monkeypatch.setattr(fp, 'printing', lambda: True)
    r = run('eval', '--model', tiny, '--seqlen', 64, '--eval_windows', 3)
    assert 'sensq eval: |' in r.stderr and '3/3' in r.stderr
    assert '█' not in r.stdout and '\r' not in r.stdout and r.stdout.startswith('| model')

def test_demo_quick_rows_stream(tiny, tmp_path):
    r = run('demo', '--model', tiny, '--seqlen', 64, '--eval_windows', 2, '--n_calib', 2, '--calib_seqlen', 64,
            '--out', tmp_path / 'd.json', '--quiet')
    lines = r.stdout.splitlines()
    assert r.stderr == ''
    methods = [l.split('|')[1].strip() for l in lines[3:8]]
    assert methods == ['fp32', 'rtn w3g128a', 'gptq w3g128a act-order', 'spqr w3g16m tau=0.2', 'gwq(rtn) w3g128a 1% fp16']
    assert lines[8].startswith('protocol default-2x64') and 'rows in' in lines[9]
    rows = json.loads((tmp_path / 'd.json').read_text())
    assert [r['method'] for r in rows] == methods and all(r['protocol'] == 'default-2x64' for r in rows)
    assert '--full' in run('demo', '--help').stdout

# ---------------------------------------------------------------- user data is never deleted (issue 9, §2)

def test_save_refuses_a_users_folder(tiny, tmp_path, no_load):
    mine = user_folder(tmp_path / 'mine')
    before = files(mine)
    for extra in ([], ['--overwrite']):
        r = run('quantize', '--model', tiny, '--save', mine, *extra, '--quiet', ok=False)
        assert 'sensq did not write' in one_error_line(r, 'quantize', f'--save {mine}: ')
    assert files(mine) == before and (mine / 'notes.txt').read_text() == 'mine'

def test_save_dot_and_parents_refused(tiny, tmp_path, monkeypatch, no_load):
    work = user_folder(tmp_path / 'work')
    monkeypatch.chdir(work)
    for dest in ('.', str(work), str(tmp_path), '..', '/', '~', str(Path.home())):
        r = run('quantize', '--model', tiny, '--save', dest, '--overwrite', '--quiet', ok=False)
        one_error_line(r, 'quantize', f'--save {dest}: ')
    assert files(work) == ['notes.txt', 'sub', 'sub/keep.txt']

def test_save_parent_is_a_file(tiny, tmp_path, no_load):
    (tmp_path / 'f').write_text('x')
    r = run('quantize', '--model', tiny, '--save', tmp_path / 'f' / 'q', '--quiet', ok=False)
    assert 'is a file, not a folder' in one_error_line(r, 'quantize', '--save ')
    r = run('quantize', '--model', tiny, '--save', tmp_path / 'f', '--overwrite', '--quiet', ok=False)
    assert 'is a file' in one_error_line(r, 'quantize', '--save ')
    assert (tmp_path / 'f').read_text() == 'x'

def test_save_into_empty_folder_keeps_mode(tiny, tmp_path, umask022):
    d = tmp_path / 'q'; d.mkdir(); os.chmod(d, 0o755)
    run('quantize', '--model', tiny, '--bits', 3, '--group', 16, '--seqlen', 64, '--eval_windows', 0, '--save', d, '--quiet')
    assert mode(d) == 0o755 and (d / MARKER_FILE).is_file()
    assert {mode(p) for p in d.iterdir()} == {0o644}
    assert [p.name for p in tmp_path.iterdir()] == ['q']  # no temporary folder left

@pytest.mark.parametrize('umask, dmode, fmode', [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600), (0o002, 0o775, 0o664)])
def test_saved_files_follow_umask(tiny, tmp_path, umask, dmode, fmode):
    old = os.umask(umask)
    try: run('quantize', '--model', tiny, '--bits', 3, '--group', 16, '--seqlen', 64, '--eval_windows', 0,
             '--save', tmp_path / 'q', '--out', tmp_path / 'r.json', '--quiet')
    finally: os.umask(old)
    assert mode(tmp_path / 'q') == dmode
    assert {mode(p) for p in (tmp_path / 'q').iterdir()} | {mode(tmp_path / 'r.json')} == {fmode}

def test_overwrite_replaces_only_a_sensq_folder(tiny, tmp_path):
    q = tmp_path / 'q'
    args = ['quantize', '--model', tiny, '--bits', 3, '--group', 16, '--seqlen', 64, '--eval_windows', 0, '--save', q, '--quiet']
    run(*args)
    first = json.loads((q / 'sensq_quant.json').read_text())
    r = run(*args[:3], '--bits', 2, *args[5:], ok=False)
    assert '--overwrite' in one_error_line(r, 'quantize', f'--save {q}: ')
    run(*args[:3], '--bits', 2, *args[5:], '--overwrite')
    assert json.loads((q / 'sensq_quant.json').read_text())['spec'] == 'w2g16a' != first['spec']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['q']  # the old output deleted, nothing else
    (q / MARKER_FILE).unlink()  # no longer marked: no longer sensq's to replace
    r = run(*args, '--overwrite', ok=False)
    assert 'sensq did not write' in r.stderr and (q / 'sensq_quant.json').is_file()

def test_out_file_not_written_by_sensq_is_kept(tiny, tmp_path, no_load):
    (tmp_path / 'notes.txt').write_text('mine')
    r = run('eval', '--model', tiny, '--out', tmp_path / 'notes.txt', '--quiet', ok=False)
    assert 'not a sensq results file' in one_error_line(r, 'eval', '--out ')
    assert (tmp_path / 'notes.txt').read_text() == 'mine'

# ---------------------------------------------------------------- bad arguments: one line, exit 2, before any work (§3)

@pytest.mark.parametrize('args, starts', [
    (['quantize', '--bits', 9], '--bits 9: bits per weight must be an integer from 2 to 8'),
    (['quantize', '--bits', 3, '--group', -4], '--group -4: '),
    (['quantize', '--method', 'qtip'], "--method qtip: unknown method"),
    (['quantize', '--method', 'lowbit', '--requant', 'alg3'], "--requant alg3: ReQuant's algorithms"),
    (['quantize', '--method', 'spqr', '--tau', -1], '--tau -1.0: '),
    (['quantize', '--method', 'rtn', '--tau', 0.2], '--tau: method rtn does not take this option'),
    (['quantize', '--method', 'gwq', '--base', 'squeezellm'], '--base squeezellm: gwq takes --base rtn or gptq'),
    (['quantize', '--eval_windows', -1], '--eval_windows -1: '),
    (['quantize', '--n_calib', 0], '--n_calib 0: '),
    (['eval', '--eval_windows', 0], '--eval_windows 0: '),
    (['eval', '--text', 'nosuchdataset'], '--text nosuchdataset: unknown text'),
    (['eval', '--text', '/no/such/file.txt'], '--text /no/such/file.txt: no such file'),
    (['eval', '--dtype', 'bogus'], '--dtype bogus: use float32, bfloat16 or float16'),
    (['eval', '--device', 'tpu'], '--device tpu: not a device sensq runs on'),
    (['eval', '--seqlen', 1], '--seqlen 1: '),
    (['demo', '--eval_windows', 0], '--eval_windows 0: '),
    (['sensitivity', '--metric', 'gwq'], '--metric gwq: unknown metric'),
    (['sensitivity', '--bits', 1], '--bits 1: '),
    (['sensitivity', '--rule', 'simpson'], '--rule simpson: '),
])
def test_bad_argument_before_any_work(tiny, no_load, args, starts):
    r = run(*args, '--model', tiny, '--quiet', ok=False)
    one_error_line(r, args[0], starts)

@pytest.mark.skipif(torch.cuda.is_available(), reason='checks a machine without CUDA')
def test_device_cuda_without_cuda(tiny, no_load):
    r = run('quantize', '--model', tiny, '--device', 'cuda', '--quiet', ok=False)
    assert 'use --device cpu' in one_error_line(r, 'quantize', '--device cuda: ')

def test_out_paths_checked_first(tiny, tmp_path, no_load):
    (tmp_path / 'f').write_text('x')
    r = run('quantize', '--model', tiny, '--out', tmp_path / 'f' / 'r.json', '--quiet', ok=False)
    assert 'is a file, not a folder' in one_error_line(r, 'quantize', '--out ')
    r = run('eval', '--model', tiny, '--out', tmp_path, '--quiet', ok=False)
    assert 'is a folder' in one_error_line(r, 'eval', f'--out {tmp_path}: ')
    r = run('sensitivity', '--model', tiny, '--out', tmp_path / 'f', '--quiet', ok=False)
    assert 'is a file' in one_error_line(r, 'sensitivity', '--out ')

def test_out_parent_missing_is_created(tiny, tmp_path):
    run('eval', '--model', tiny, '--seqlen', 64, '--eval_windows', 1, '--out', tmp_path / 'a' / 'b' / 'r.json', '--quiet')
    assert (tmp_path / 'a' / 'b' / 'r.json').is_file()

@pytest.mark.parametrize('cut', [20, 1000, -1000])
def test_corrupt_safetensors_named(tiny, tmp_path, no_load, cut):
    bad = tmp_path / 'bad'
    shutil.copytree(tiny, bad)
    data = (bad / 'model.safetensors').read_bytes()
    (bad / 'model.safetensors').write_bytes(data[:cut])
    r = run('eval', '--model', bad, '--quiet', ok=False)
    assert f"{bad / 'model.safetensors'} is truncated or corrupt" in one_error_line(r, 'eval', f'--model {bad}: ')

@pytest.mark.parametrize('args, message', [
    (['eval', '--model', '/no/such/model'], '--model /no/such/model: not found'),
    (['eval', '--model', 'no-such-org/no-such-model'], 'HF_HUB_OFFLINE'),
    (['eval', '--seqlen', 10**7], '--seqlen 10000000: text too short'),
    (['eval', '--seqlen', 64, '--eval_windows', 10**6], '--eval_windows 1000000: the held-out part'),
])
def test_bad_input_after_load_clear_error(tiny, args, message):
    if '--model' not in args: args = args + ['--model', tiny]
    r = run(*args, '--quiet', ok=False)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1
