"README.md is generated from nbs/index.ipynb, shows the two commands, and its Python example prints what it says."
import os, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def test_readme_in_sync_with_index():
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'make_readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

def test_readme_shows_the_two_commands():
    text = (ROOT/'README.md').read_text()
    assert 'make demo' in text and 'make test' in text


def readme_example(text:str, heading:str='## A tiny example'):
    "The Python code blocks of the README section `heading`, and the first plain code block after them (its output)."
    sec = text.split(heading, 1)[1].split('\n## ', 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", sec, re.S)
    code = [b for lang, b in blocks if lang == 'python']
    out = next(b for lang, b in blocks if lang == '')
    return '\n'.join(code), out.strip()


LINE = re.compile(r"^(w\w+): ([\d.]+) bits/weight, loss ([\d.]+) -> ([\d.]+)$")

def test_readme_example_prints_the_readme_numbers(tmp_path):
    """Run the README's example in a fresh interpreter and compare what it prints with the README's printed output.
    The grid name and the bits are exact. The losses are fp32 mean cross-entropies over 4×63 predictions of a 256-way
    softmax: another CPU's kernels (or thread count) sum them in another order, a few ulps (~1e-6 relative), and the
    README rounds to 6 decimals (5e-7); allowed: 2e-5 absolute, ~4e-6 relative at 5.6. (The quantized weights
    themselves are identical on every CPU: rounding to the grid is elementwise IEEE arithmetic.)"""
    code, printed = readme_example((ROOT/'README.md').read_text())
    want = LINE.match(printed)
    assert want, f"the README's printed output does not have the expected form: {printed!r}"
    script = tmp_path / 'example.py'
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                       env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    got = LINE.match(r.stdout.strip().splitlines()[-1])
    assert got, f"the example printed {r.stdout!r}"
    assert got.group(1) == want.group(1) and float(got.group(2)) == float(want.group(2)), (got.groups(), want.groups())
    for g in (3, 4):
        assert abs(float(got.group(g)) - float(want.group(g))) <= 2e-5, (got.groups(), want.groups())
    assert float(got.group(4)) != float(got.group(3))            # quantization changed the loss


def test_every_notebook_in_the_table():
    "The README's notebook table names every notebook in nbs/ (a new chapter is listed where a reader looks first)."
    sec = (ROOT/'README.md').read_text().split('## The notebooks', 1)[1].split('\n## ', 1)[0]
    named = set(re.findall(r"`(\w+)`", sec))
    range_ = re.findall(r"`(\w+)` … `(\w+)`", sec)                        # `30_dense_sparse` … `34_ds_study`
    nbs = sorted(p.stem for p in (ROOT/'nbs').glob('*.ipynb') if p.stem != 'index' and not p.stem.startswith(('_', '.')))
    covered = lambda n: n in named or any(a <= n <= b for a, b in range_)
    assert [n for n in nbs if not covered(n)] == []
