"""The whole sensq test suite, as `make test` and CI run it.

1. notebooks are clean (`nbdev_clean` changes nothing) and the module is in sync (`nbdev_export` changes nothing);
2. `nbdev_test` on every notebook, each in a process of its own (flags in settings.ini `tst_flags`, i.e. `slow cuda`, skipped);
3. `pytest tests/`.
Ends with one line `N passed, N failed` summing all three (a notebook counts as one test).
"""
import os, subprocess, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

def sh(*args, **kw):
    print('$', ' '.join(map(str, args)), flush=True)
    return subprocess.run([str(a) for a in args], cwd=ROOT, text=True, **kw)

def tree_state():
    "Content of nbs/ and sensq/ as git sees it (tracked diffs and untracked files)."
    out = sh('git', 'status', '--porcelain', '--untracked-files=all', '--', 'nbs', 'sensq', capture_output=True).stdout
    diff = sh('git', 'diff', '--', 'nbs', 'sensq', capture_output=True).stdout
    return out + diff

def unchanged_by(cmd):
    "Run an nbdev command; True when it changed nothing in nbs/ or sensq/."
    before = tree_state()
    r = sh(BIN/cmd, capture_output=True)
    if r.returncode: print(r.stdout, r.stderr)
    after = tree_state()
    if before != after: print(f"FAILED: `{cmd}` changed files: run `make export` (nbdev_export + nbdev_clean) and commit.\n{after}")
    return r.returncode == 0 and before == after

def notebook_files():
    "The notebooks `nbdev_test` would test (its own selection: nbglob, `.notest` folders and `skip_exec` left out)."
    from nbdev.config import get_config
    from nbdev.doclinks import nbglob
    from nbdev.test import _keep_file
    return [f.absolute() for f in sorted(nbglob(get_config().nbs_path, as_path=True)) if _keep_file(f, '.notest')]

def test_one_notebook(nb:Path):
    "`nbdev_test` on one notebook in a process of its own; (name, passed, seconds, output)."
    t = time.time()
    r = subprocess.run([str(BIN/'nbdev_test'), '--path', str(nb), '--do_print'], cwd=ROOT, text=True, capture_output=True)
    return nb.name, r.returncode == 0, time.time() - t, r.stdout + r.stderr

def notebook_tests():
    """Run nbdev_test on every notebook, each in a fresh process (two at a time); return (passed, failed).
    One process per notebook: a notebook that changes process-wide state (transformers' quantizer registry, torch's
    thread count, import hooks) cannot then change the next notebook's results depending on which worker ran it."""
    from concurrent.futures import ThreadPoolExecutor
    t0, files = time.time(), notebook_files()
    print(f'$ nbdev_test --path <each of {len(files)} notebooks>, {min(os.cpu_count() or 1, 2)} at a time', flush=True)
    with ThreadPoolExecutor(min(os.cpu_count() or 1, 2)) as ex:
        results = list(ex.map(test_one_notebook, files))
    failed = [name for name, ok, _, _ in results if not ok]
    for name, ok, secs, out in sorted(results, key=lambda r: -r[2]):
        print(f"{name}: {'passed' if ok else 'FAILED'} in {secs:.0f} s")
        if not ok: print(out)
    if failed: print('nbdev Tests Failed On The Following Notebooks:\n\t' + '\n\t'.join(failed))
    print(f"nbdev_test: {len(files)} notebooks in {time.time()-t0:.0f}s")
    return len(files) - len(failed), len(failed)

def pytest_tests():
    "Run pytest on tests/; return (passed, failed, skipped) from its JUnit XML."
    xml = ROOT/'.pytest_cache'/'junit.xml'
    xml.parent.mkdir(exist_ok=True)
    r = sh(BIN/'python', '-m', 'pytest', 'tests', '-q', '-p', 'no:cacheprovider', f'--junitxml={xml}')
    if not xml.exists(): return 0, 1, 0
    s = ET.parse(xml).getroot()
    s = s if s.tag == 'testsuite' else s.find('testsuite')
    total, fail, err, skip = (int(s.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped'))
    if r.returncode not in (0, 5) and fail + err == 0: err = 1
    return total - fail - err - skip, fail + err, skip

def main():
    checks = [unchanged_by('nbdev_clean'), unchanged_by('nbdev_export')]
    nb_pass, nb_fail = notebook_tests()
    py_pass, py_fail, py_skip = pytest_tests()
    passed = sum(checks) + nb_pass + py_pass
    failed = checks.count(False) + nb_fail + py_fail
    print(f"{passed} passed, {failed} failed" + (f", {py_skip} skipped" if py_skip else ''))
    sys.exit(1 if failed or passed == 0 else 0)

if __name__ == '__main__': main()
