"""The whole sensq test suite, as `make test` and CI run it.

1. notebooks are clean (`nbdev_clean` changes nothing) and the module is in sync (`nbdev_export` changes nothing);
2. `nbdev_test` on every notebook (flags in settings.ini `tst_flags`, i.e. `slow cuda`, skipped);
3. `pytest tests/`.
Ends with one line `N passed, N failed` summing all three (a notebook counts as one test).
"""
import os, re, subprocess, sys, time
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

def notebook_tests():
    "Run nbdev_test on all notebooks; return (passed, failed)."
    t0 = time.time()
    r = sh(BIN/'nbdev_test', '--n_workers', str(min(os.cpu_count() or 1, 2)), '--do_print', '--timing', capture_output=True)
    out = r.stdout + r.stderr
    print(out)
    started = {Path(f).name for f in re.findall(r'Starting (\S+\.ipynb)', out)}
    failed = set(re.findall(r'^\t(\S+\.ipynb)$', out.split('Failed On The Following Notebooks:')[-1], re.M)) if r.returncode else set()
    if r.returncode and not failed: failed = {'nbdev_test'}
    print(f"nbdev_test: {len(started)} notebooks in {time.time()-t0:.0f}s")
    return len(started - failed), len(failed)

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
