"""The docs site renders in a real browser.

`tools/build_docs_offline.py` builds the site from nbdev's processed notebooks (Quarto is not installable on our
machines). Every page is opened in headless Chromium and its DOM after load (and after MathJax has typeset it) is
checked against what the *source* notebook promises: its `# Title`, a `show_doc` heading for every public name its
`#| export` cells define, a decoded figure for every image output, an output area for every code cell the notebook
shows with an output, its LaTeX typeset by MathJax (no raw `$$` left, no TeX error), and no error output or unrendered
markdown. The site carries its own MathJax: no page refers to anything outside it. A deliberately broken project
shows that the check fails when it should.
"""
import ast, fcntl, json, os, re, shutil, subprocess, sys, tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from bs4 import BeautifulSoup

REPO = Path(__file__).resolve().parents[1]
BUILDER = REPO/'tools'/'build_docs_offline.py'
ROOT = Path(os.environ.get('SENSQ_DOCS_ROOT') or REPO)  # the project whose docs are checked (default: this repo)
NBS = ROOT/'nbs'
_ENV = dict(os.environ, TRITON_INTERPRET='1', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', TOKENIZERS_PARALLELISM='false')


# ------------------------------------------------------------------ chromium
def _chromium():
    for c in (os.environ.get('CHROMIUM'), shutil.which('chromium'), '/usr/bin/chromium', shutil.which('chromium-browser')):
        if c and os.path.isfile(c) and os.access(c, os.X_OK): return c
    return None


MATHJAX_DIR = Path('/usr/share/javascript/mathjax')  # Debian's libjs-mathjax, copied into the site by the builder


def _need_mathjax():
    if (MATHJAX_DIR/'MathJax.js').is_file(): return MATHJAX_DIR
    msg = f'MathJax not found in {MATHJAX_DIR}: run `bash tools/ensure_chromium.sh` (apt-get install -y libjs-mathjax)'
    if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'): pytest.fail(msg)
    pytest.skip(msg)


def _need_chromium():
    c = _chromium()
    if c: return c
    msg = 'headless Chromium not found (/usr/bin/chromium): run `bash tools/ensure_chromium.sh` (apt-get install -y chromium)'
    if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'): pytest.fail(msg)
    pytest.skip(msg)


# Injected into a copy of each page: records image decoding and script errors once the page has loaded.
_PROBE = """<script>window.__sqErrors=[];
window.addEventListener('error',function(e){if(e instanceof ErrorEvent)window.__sqErrors.push(String(e.message));},true);
window.addEventListener('load',function(){
 var de=document.documentElement;
 if(window.MathJax&&window.MathJax.Hub){MathJax.Hub.Queue(function(){de.setAttribute('data-sq-math','done');});}
 else de.setAttribute('data-sq-math','none');
 var imgs=Array.prototype.map.call(document.images,function(i){return {src:(i.getAttribute('src')||'').slice(0,60),
   w:i.naturalWidth,h:i.naturalHeight,data:(i.getAttribute('src')||'').indexOf('data:image/')==0};});
 document.documentElement.setAttribute('data-sq-check',JSON.stringify({imgs:imgs,errors:window.__sqErrors,
   height:document.body?document.body.scrollHeight:0}));});</script>"""


# --virtual-time-budget: the DOM is dumped once the page is idle (MathJax typesets after the load event)
_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
          '--disable-background-networking', '--disable-component-update', '--disable-sync', '--virtual-time-budget=120000']


def _probe_copy(page: Path) -> Path:
    probe = page.with_name(page.stem + '.__probe__.html')
    src = page.read_text(encoding='utf-8')
    probe.write_text(src.replace('<head>', '<head>' + _PROBE, 1) if '<head>' in src else _PROBE + src, encoding='utf-8')
    return probe


def _result(dom: str, err: str = '') -> tuple[BeautifulSoup, dict]:
    soup = BeautifulSoup(dom, 'html.parser')
    html_el = soup.find('html')
    rec = json.loads(html_el['data-sq-check']) if html_el is not None and html_el.get('data-sq-check') else None
    if rec is not None: rec['math'] = html_el.get('data-sq-math')
    return soup, rec if rec is not None else {'failed_to_load': err[-300:] or 'no load event'}


def _dump_dom(url: str, chromium: str, *flags) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix='sq-chromium-') as prof:
        return subprocess.run([chromium, *_FLAGS, *flags, f'--user-data-dir={prof}', '--dump-dom', url],
                              capture_output=True, text=True, timeout=120)


def _open_in_chromium(page: Path, chromium: str) -> tuple[BeautifulSoup, dict]:
    "Open `page` alone in headless Chromium; return its DOM after load and the probe's record."
    probe = _probe_copy(page)
    try: r = _dump_dom(probe.as_uri(), chromium)
    finally: probe.unlink()
    return _result(r.stdout, f'rc={r.returncode} {r.stderr}')


_COLLECT = """<script>window.addEventListener('load',function(){var tries=0;
function ready(){var ok=true; document.querySelectorAll('iframe').forEach(function(f){
  try{if(!f.contentDocument.documentElement.getAttribute('data-sq-math'))ok=false;}catch(e){}}); return ok;}
function collect(){if(!ready()&&tries++<600){setTimeout(collect,100);return;} var out={};
 document.querySelectorAll('iframe').forEach(function(f){var d=null;
  try{d=f.contentDocument.documentElement.outerHTML}catch(e){d=null}; out[f.getAttribute('data-page')]=d;});
 document.getElementById('sq-out').textContent=JSON.stringify(out);}
collect();});</script>"""


def _open_pages_in_chromium(pages: list[Path], chromium: str) -> dict:
    """Open every page in one headless Chromium (each in its own frame: a full page load; one browser start instead
    of one per page); a page whose frame cannot be read is opened alone. Returns {page: (dom, probe record)}."""
    probes = {p: _probe_copy(p) for p in pages}
    wrap = pages[0].parent/'__sq_check__.html'
    frames = ''.join(f'<iframe data-page="{i}" src="{q.as_uri()}" style="width:1280px;height:900px"></iframe>'
                     for i, q in enumerate(probes.values()))
    wrap.write_text(f'<!DOCTYPE html><html><head>{_COLLECT}</head><body><pre id="sq-out"></pre>{frames}</body></html>')
    try: r = _dump_dom(wrap.as_uri(), chromium, '--allow-file-access-from-files')
    finally:
        wrap.unlink()
        for q in probes.values(): q.unlink()
    out = BeautifulSoup(r.stdout, 'html.parser').find(id='sq-out')
    doms = json.loads(out.get_text()) if out is not None and out.get_text().strip() else {}
    res = {}
    for i, p in enumerate(pages):
        soup, rec = _result(doms.get(str(i)) or '')
        res[p] = (soup, rec) if 'failed_to_load' not in rec else _open_in_chromium(p, chromium)
    return res


# ------------------------------------------------------------------ what a source notebook promises
_re_dir = re.compile(r'^\s*#\|\s*(.*?)\s*$')


def _directives(src: str) -> dict:
    res = {}
    for line in src.splitlines():
        m = _re_dir.match(line)
        if not m: break
        k, _, v = m.group(1).partition(':')
        if k.strip(): res[k.strip().split()[0]] = v.strip().lower()
    return res


def _src(c): return c['source'] if isinstance(c['source'], str) else ''.join(c['source'])


def _expected_title(cells):
    "nbdev's frontmatter rule: a YAML raw cell's `title`, else the first markdown `# Title` line."
    import yaml
    for c in cells:
        s = _src(c).strip()
        if c['cell_type'] == 'raw' and s.startswith('---'):
            try: d = yaml.safe_load(s.strip('-')) or {}
            except yaml.YAMLError: d = {}
            if isinstance(d, dict) and d.get('title'): return str(d['title']).strip()
    for c in cells:
        if c['cell_type'] == 'markdown':
            m = re.search(r'^#\s+(\S.*?)\s*$', _src(c), flags=re.MULTILINE)
            if m: return m.group(1)
    return None


def _exported_names(cells):
    "Public functions/classes defined at the top of `#| export`/`#| exports` cells (nbdev adds a show_doc for each)."
    names = []
    for c in cells:
        if c['cell_type'] != 'code': continue
        d = _directives(_src(c))
        if not ({'export', 'exports'} & d.keys()) or 'hide' in d or d.get('include') == 'false': continue
        code = '\n'.join(l for l in _src(c).splitlines() if not l.lstrip().startswith(('%', '!')))
        try: tree = ast.parse(code)
        except SyntaxError: continue
        names += [o.name for o in tree.body if isinstance(o, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and (o.name[0] != '_' or o.name[:2] == '__')]
    return names


_re_code_md = re.compile(r'```.*?```|`[^`\n]*`', re.DOTALL)
_re_math = re.compile(r'\$\$.+?\$\$|(?<![\\$])\$[^\s$][^$\n]*?(?<![\s\\])\$', re.DOTALL)


def _has_math(cells) -> bool:
    "Whether any markdown cell holds LaTeX between `$`/`$$` (outside code)."
    return any(c['cell_type'] == 'markdown' and _re_math.search(_re_code_md.sub('', _src(c))) for c in cells)


def _shown(c) -> bool:
    "A code cell whose outputs the docs show (not hidden, not exported, output not switched off)."
    d = _directives(_src(c))
    return not ({'hide', 'export', 'exporti', 'default_exp'} & d.keys() or 'false' in (d.get('include'), d.get('output')))


def _n_output_cells(cells) -> int:
    "Code cells the docs show with at least one output other than stderr (what a reader should see computed)."
    return sum(1 for c in cells if c['cell_type'] == 'code' and _shown(c) and any(
        not (o.get('output_type') == 'stream' and o.get('name') == 'stderr') for o in c.get('outputs', [])))


def _n_image_outputs(cells):
    "Image outputs of cells the docs show (not hidden, not exported, output not switched off)."
    n = 0
    for c in cells:
        if c['cell_type'] != 'code': continue
        d = _directives(_src(c))
        if {'hide', 'export', 'exporti', 'default_exp'} & d.keys() or 'false' in (d.get('include'), d.get('output')): continue
        n += sum(1 for o in c.get('outputs', []) if {'image/png', 'image/jpeg', 'image/gif'} & set(o.get('data', {})))
    return n


_CHEAP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Pass)


def _is_cheap(stmt) -> bool:
    if isinstance(stmt, _CHEAP): return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant): return True  # a docstring
    return isinstance(stmt, (ast.Assign, ast.AnnAssign)) and isinstance(stmt.value, ast.Constant)  # os.environ[..] = '1'


def work_run_by_docs_build(cells) -> list[str]:
    """Cells nbdev's docs processing executes that do more than import/define (nbdev warns "Found cells containing
    imports and other code"): `nbdev_proc_nbs`, hence `nbdev_docs` and our build, re-runs every cell that imports."""
    res = []
    for i, c in enumerate(cells):
        if c['cell_type'] != 'code': continue
        src = _src(c)
        d = _directives(src)
        if 'nbdev_export()' in src or d.get('eval') == 'false' or {'export', 'exports', 'exporti', 'exec_doc'} & d.keys(): continue
        try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
        except SyntaxError: continue
        if not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)): continue
        work = [st for st in tree.body if not _is_cheap(st)]
        if work: res.append(f'cell {i} (0-based): `{ast.get_source_segment(src, work[0]) or ast.dump(work[0])[:60]}`'.replace('\n', ' ')[:160])
    return res


def expectations(nb_path: Path) -> dict:
    cells = json.loads(nb_path.read_text(encoding='utf-8'))['cells']
    return dict(title=_expected_title(cells), names=_exported_names(cells), n_images=_n_image_outputs(cells),
                math=_has_math(cells), n_outputs=_n_output_cells(cells))


# ------------------------------------------------------------------ what the browser shows
_re_err_line = re.compile(r'^\s*(?:[A-Za-z_][\w.]*)?(?:Error|Exception)(?::|\s{2,}|$)', re.MULTILINE)


def check_page(soup: BeautifulSoup, rec: dict, exp: dict) -> list[str]:
    "Everything wrong with one rendered page, as tagged messages (empty: the page is fine)."
    bad = []
    if 'failed_to_load' in rec: return [f"[load] Chromium did not finish loading the page: {rec['failed_to_load']}"]
    if rec.get('height', 0) < 100: bad.append(f"[load] page body is {rec.get('height')} px high: nothing rendered")
    if rec['errors']: bad.append(f"[script] JavaScript errors: {rec['errors']}")
    main = soup.select_one('main') or soup.body or soup
    # title
    h1 = soup.select_one('h1.title') or main.find('h1')
    h1_text = h1.get_text(' ', strip=True).rstrip('¶').strip() if h1 else ''
    doc_title = soup.title.get_text(strip=True) if soup.title else ''
    if not exp['title']: bad.append('[title] the notebook has no `# Title` markdown line (nbdev takes the page title from it)')
    elif h1_text != exp['title'].replace('`', '') or exp['title'].replace('`', '') not in doc_title:
        bad.append(f"[title] expected {exp['title']!r}; page <h1> is {h1_text!r}, <title> is {doc_title!r}")
    # API: a show_doc heading for each exported name, and at least one rendered signature
    heads = [h.get_text(' ', strip=True).rstrip('¶').strip() for h in main.find_all(['h2', 'h3', 'h4'])]
    missing = [n for n in exp['names'] if not any(h == n or h.endswith('.' + n) for h in heads)]
    if missing: bad.append(f'[api] no show_doc heading for exported {missing}')
    if exp['names']:
        sigs = ' '.join(p.get_text() for p in main.find_all('pre'))
        if not any(re.search(rf'\b{re.escape(n)}\s*\(', sigs) for n in exp['names']):
            bad.append(f"[api] no rendered signature `name(` for any of {exp['names']}")
    # figures: every <img> decoded, and one decoded embedded image per image output of the notebook
    broken = [i['src'] for i in rec['imgs'] if not (i['w'] > 0 and i['h'] > 0)]
    if broken: bad.append(f'[figure] images that did not decode/load: {broken}')
    n_ok = sum(1 for i in rec['imgs'] if i['data'] and i['w'] > 0 and i['h'] > 0)
    if n_ok < exp['n_images']: bad.append(f"[figure] {exp['n_images']} image outputs in the notebook, {n_ok} shown")
    # outputs: every code cell the notebook shows with an output has an output area on the page (show_doc's
    # rendered markdown does not count)
    areas = [el for el in main.select('.jp-OutputArea-output') if 'jp-RenderedMarkdown' not in (el.get('class') or [])]
    if len(areas) < exp.get('n_outputs', 0):
        bad.append(f"[output] {exp['n_outputs']} code cells with outputs in the notebook, {len(areas)} output areas on the page")
    # math: MathJax typeset the page's LaTeX, without TeX errors
    if exp.get('math'):
        if rec.get('math') != 'done': bad.append(f"[math] MathJax did not typeset the page (state {rec.get('math')!r}): is it in the site?")
        elif not main.select('.MathJax_CHTML, .MathJax_Display, .mjx-chtml'): bad.append('[math] the notebook has LaTeX, the page no MathJax output')
    errs = main.select('.MathJax_Error, [class*="noError"], [class*="merror"]')
    if errs: bad.append(f"[math] TeX errors: {[e.get_text(' ', strip=True)[:80] for e in errs[:3]]}")
    # error output: tracebacks / exception lines in outputs (prose may mention `ValueError` freely)
    for el in main.select('.sq-error-output'):
        bad.append(f"[error] error output: {el.get_text(' ', strip=True)[:200]!r}")
    for el in main.select('.jp-OutputArea-output'):
        t = el.get_text('\n')
        if 'Traceback (most recent call last)' in t or (
                el.get('data-mime-type') == 'application/vnd.jupyter.stderr' and _re_err_line.search(t)):
            bad.append(f'[error] traceback/exception in output: {t.strip()[:200]!r}')
        if '\x1b[' in t: bad.append(f'[error] raw ANSI escapes in output: {t.strip()[:120]!r}')
    # unrendered markdown / Quarto syntax in prose (outside code and outputs)
    prose = BeautifulSoup(str(main), 'html.parser')
    for el in prose.select('pre, code, script, style, nav, table, .jp-OutputArea, .jp-CodeCell .jp-InputArea'): el.decompose()
    text = prose.get_text('\n')
    for pat, what in ((r'\$\$', 'raw `$$` (math not typeset)'), (r'```', 'a raw ``` fence'), (r'(?m)^\s*#\|', 'a `#|` directive'), (r'(?m)^\s*:::', 'a Quarto `:::` div'),
                      (r'(?m)^\s*#{1,6} \S', 'an unrendered `#` heading'), (r'(?m)^\s*output-file:', 'frontmatter'), (r'`[^`\n]+`', 'an unrendered `code` span'),
                      (r'\{(?:target|style|width|height)=|\{[.#][A-Za-z][\w-]*[\s}]', 'Pandoc `{...}` attributes')):
        m = re.search(pat, text)
        if m: bad.append(f"[markdown] {what} in the page text: {' '.join(text[max(0, m.start() - 60):m.end() + 60].split())!r}")
    for pre in main.select('.jp-CodeCell .jp-InputArea pre'):
        if re.search(r'(?m)^\s*#\|', pre.get_text()): bad.append('[markdown] a `#|` directive shown in a code cell')
    return bad


# ------------------------------------------------------------------ building
_re_built = re.compile(r'^(\S.*?) -> (.+?\.html)  \((.*)\)$')


def build(root: Path, out: Path, *extra) -> tuple[subprocess.CompletedProcess, dict]:
    "Run the offline builder; return the process and {source notebook (relative to nbs/): page path}."
    r = subprocess.run([sys.executable, str(BUILDER), '--root', str(root), '--out', str(out), *extra],
                       capture_output=True, text=True, timeout=600, env=_ENV, cwd=root)
    pages = {m.group(1): Path(m.group(2)) for m in map(_re_built.match, r.stdout.splitlines()) if m}
    return r, pages


def _source_notebooks(nbs: Path) -> list[str]:
    "The notebooks nbdev documents: *.ipynb under nbs/, skipping names that start with `_` or `.`."
    return sorted(p.relative_to(nbs).as_posix() for p in nbs.rglob('*.ipynb')
                  if not any(s.startswith(('_', '.')) for s in p.relative_to(nbs).parts))


SOURCES = _source_notebooks(NBS)


_HEAVY_MSG = ('nbdev_proc_nbs (run by nbdev_docs and by tools/build_docs_offline.py) executes every cell that '
              'contains an import; these cells also do work (load models, run experiments). Put the imports in a cell '
              'of their own (nbdev FAQ, docs/style.md):')


@pytest.mark.parametrize('nb', SOURCES)
def test_docs_build_runs_only_imports_and_exports(nb):
    work = work_run_by_docs_build(json.loads((NBS/nb).read_text())['cells'])
    assert not work, f'{nb}: ' + _HEAVY_MSG + '\n' + '\n'.join(work)


@pytest.fixture(scope='session')
def site(tmp_path_factory):
    "The offline site of this repository, built once per session (nbdev's _proc/ is shared: build under a lock)."
    if not SOURCES: pytest.skip('no notebooks in nbs/ yet')
    heavy = {nb: w for nb in SOURCES if (w := work_run_by_docs_build(json.loads((NBS/nb).read_text())['cells']))}
    if heavy: pytest.fail('not building the docs: ' + _HEAVY_MSG + '\n' + json.dumps(heavy, indent=1))
    _need_mathjax()
    out = tmp_path_factory.mktemp('docs')/'_site'
    with open(Path(tempfile.gettempdir())/'sensq-docs-build.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r, pages = build(ROOT, out)
    assert r.returncode == 0, f'offline docs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}'
    return out, pages


@pytest.fixture(scope='session')
def rendered(site):
    "Every page opened in headless Chromium (one browser, a frame per page): {source notebook: (dom, probe record)}."
    chromium = _need_chromium()
    out, pages = site
    by_page = _open_pages_in_chromium(list(pages.values()), chromium)
    return {nb: by_page[p] for nb, p in pages.items()}


def test_every_notebook_has_a_page(site):
    out, pages = site
    assert sorted(pages) == SOURCES, f'pages built for {sorted(pages)}, notebooks are {SOURCES}'
    for p in pages.values(): assert p.is_file() and p.resolve().is_relative_to(out.resolve())
    assert (out/'index.html').is_file()
    assert not list(out.parent.glob(f'.{out.name}.tmp-*')), 'temporary build folder left behind'


def test_site_is_self_contained(site):
    "MathJax is inside the site, and no page loads a script, stylesheet or image from outside its folder."
    out, pages = site
    assert (out/'_static'/'mathjax'/'MathJax.js').is_file() and (out/'_static'/'mathjax'/'config'/'TeX-AMS_CHTML.js').is_file()
    outside = []
    for page in [out/'index.html', *pages.values()]:
        soup = BeautifulSoup(page.read_text(encoding='utf-8'), 'html.parser')
        for el, attr in [(e, 'src') for e in soup.find_all(['script', 'img'], src=True)] + [(e, 'href') for e in soup.find_all('link', href=True)]:
            u = urlparse(el[attr])
            if u.scheme == 'data': continue
            target = (page.parent/unquote(u.path)).resolve()
            if u.scheme or u.netloc or not target.is_relative_to(out.resolve()) or not target.is_file():
                outside.append(f'{page.name}: {el[attr]}')
    assert not outside, f'pages refer to files outside the site (or missing): {outside[:10]}'
    mj = [p for p in pages.values() if '_static/mathjax/MathJax.js' in p.read_text(encoding='utf-8')]
    assert len(mj) == len(pages), 'every page loads the site\'s own MathJax'


def _links(page: Path) -> set[Path]:
    soup = BeautifulSoup(page.read_text(encoding='utf-8'), 'html.parser')
    res = set()
    for a in soup.find_all('a', href=True):
        u = urlparse(a['href'])
        if u.scheme or u.netloc or not u.path: continue
        res.add((page.parent/unquote(u.path)).resolve())
    return res


def test_index_links_every_page(site):
    out, pages = site
    links = _links(out/'index.html')
    missing = [s for s, p in pages.items() if p.resolve() not in links]
    assert not missing, f'index.html does not link {missing}'


@pytest.mark.parametrize('nb', SOURCES)
def test_page_renders_in_chromium(nb, rendered):
    soup, rec = rendered[nb]
    bad = check_page(soup, rec, expectations(NBS/nb))
    assert not bad, f'{nb}:\n' + '\n'.join(bad)


# ------------------------------------------------------------------ the check can fail
def _nb(cells):
    return {'cells': cells, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
            'nbformat': 4, 'nbformat_minor': 5}


def _md(s): return {'cell_type': 'markdown', 'metadata': {}, 'source': s}
def _code(s, outputs=()): return {'cell_type': 'code', 'metadata': {}, 'source': s, 'execution_count': None, 'outputs': list(outputs)}


_PNG_1PX = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=='


@pytest.fixture(scope='module')
def broken_project(tmp_path_factory):
    "A tiny nbdev project whose pages are broken in every way the check looks for, built once."
    _need_mathjax()
    root = tmp_path_factory.mktemp('broken')
    ini = (ROOT/'settings.ini').read_text()
    ini = re.sub(r'(?m)^(lib_name|lib_path|repo)\s*=.*$', lambda m: f'{m.group(1)} = sqdocbroken', ini)
    (root/'settings.ini').write_text(ini)
    (root/'sqdocbroken').mkdir()
    (root/'sqdocbroken'/'__init__.py').write_text('')
    (root/'nbs').mkdir()
    err = {'output_type': 'error', 'ename': 'NameError', 'evalue': "name 'foo' is not defined",
           'traceback': ['\x1b[0;31mNameError\x1b[0m   Traceback (most recent call last)', "NameError: name 'foo' is not defined"]}
    bad_png = {'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': 'iVBORw0KGgoAAAAbroken==', 'text/plain': '<Figure>'}}
    (root/'nbs'/'00_broken.ipynb').write_text(json.dumps(_nb([
        {'cell_type': 'raw', 'metadata': {}, 'source': '---\nskip_showdoc: true\n---'},
        _md('# Broken page\n\n> Every defect the docs check must catch.'),
        _code('#| default_exp broken'),
        _code('#| export\ndef documented(x:int): # a number\n    "Doc."\n    return x'),
        _md('Prose may say `ValueError` and Error freely.'),
        _code('foo', [err]),
        _code('plot()', [bad_png]),
        _md('<div>\n```python\nx = 1\n```\n</div>'),
        _md('Good math $x^2$ and a TeX error: $$\\frac{1}{2$$'),
    ])))
    good_png = {'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': _PNG_1PX, 'text/plain': '<Figure>'}}
    (root/'nbs'/'01_untitled.ipynb').write_text(json.dumps(_nb([
        _md('Some prose, but no title line; typeset math: $\\sum_i w_i^2$ and $$\\frac{a}{b}$$'), _code('1+1', [good_png])])))
    out = root/'_site'
    r, pages = build(root, out, '--n-workers', '0')
    assert r.returncode == 0, f'{r.stdout}\n{r.stderr[-3000:]}'
    return root, out, pages


def test_check_catches_broken_pages(broken_project):
    chromium = _need_chromium()
    root, out, pages = broken_project
    assert sorted(pages) == ['00_broken.ipynb', '01_untitled.ipynb']
    res = _open_pages_in_chromium([pages['00_broken.ipynb'], pages['01_untitled.ipynb']], chromium)
    bad = check_page(*res[pages['00_broken.ipynb']], expectations(root/'nbs'/'00_broken.ipynb'))
    tags = {b.split(']')[0] + ']' for b in bad}
    assert {'[api]', '[figure]', '[error]', '[markdown]', '[math]'} <= tags, bad
    assert not any('ValueError' in b for b in bad), bad  # prose mentioning an exception is not error text
    assert '[title]' not in tags, bad
    exp = expectations(root/'nbs'/'01_untitled.ipynb')
    assert exp['math'] and exp['n_outputs'] == 1, exp
    bad = check_page(*res[pages['01_untitled.ipynb']], exp)
    assert [b.split(']')[0] + ']' for b in bad] == ['[title]'], bad  # figure decodes, math typeset: only the title is wrong
    bad = check_page(*res[pages['01_untitled.ipynb']], dict(exp, n_outputs=2))     # a cell's output missing from the page
    assert '[output]' in {b.split(']')[0] + ']' for b in bad}, bad
    soup, rec = res[pages['01_untitled.ipynb']]
    bad = check_page(soup, dict(rec, math='none'), exp)                            # MathJax never ran
    assert '[math]' in {b.split(']')[0] + ']' for b in bad}, bad


def test_failed_build_keeps_previous_site(broken_project):
    root, out, pages = broken_project
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()}
    bad = root/'nbs'/'02_raises.ipynb'
    bad.write_text(json.dumps(_nb([_md('# Raises'), _code('#| export\nraise RuntimeError("boom at import")')])))
    try: r, _ = build(root, out, '--n-workers', '0')
    finally: bad.unlink()
    assert r.returncode != 0 and 'boom at import' in r.stderr, r.stderr[-2000:]
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()}
    assert after == before
    assert not list(root.glob('._site.*')), list(root.glob('._site.*'))


def test_render_failure_is_atomic(broken_project, monkeypatch):
    "A failure while rendering (after the temporary folder exists) leaves the old site and no temporary folder."
    import importlib.util
    root, out, pages = broken_project
    spec = importlib.util.spec_from_file_location('build_docs_offline', BUILDER)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()}
    def boom(*a, **k): raise RuntimeError('renderer exploded')
    monkeypatch.setattr(mod, '_exporter', boom)
    with pytest.raises(RuntimeError, match='renderer exploded'):
        mod.build_site(root/'_proc', out, 'x', nbs=root/'nbs')
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()} == before
    assert not list(root.glob('._site.*'))
    monkeypatch.undo()
    # and a good rebuild replaces the whole folder (a stale file disappears)
    (out/'stale.html').write_text('old')
    mod.build_site(root/'_proc', out, 'x', nbs=root/'nbs')
    assert not (out/'stale.html').exists() and (out/'broken.html').is_file()
    assert not list(root.glob('._site.*'))


# ------------------------------------------------------------------ executing notebooks for their committed outputs
def _load_tool(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, REPO/'tools'/f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_directives_and_skipping():
    ex = _load_tool('execute_notebooks')
    assert ex.directives('#| slow\n#| eval: false\nx = 1') == {'slow': '', 'eval': 'false'}
    assert ex.directives('#|export\n\n#| hide\nprint(1)\n#| slow') == {'export': '', 'hide': ''}
    assert ex.skipped('#| slow\nx', {'slow', 'cuda'}) and ex.skipped('#| eval: false\nx', {'slow'})
    assert not ex.skipped('x = 1  #| slow', {'slow'}) and not ex.skipped('#| hide\nx', {'slow'})
    assert set(ex.tst_flags()) == {'slow', 'cuda'}


def test_execute_notebook_saves_outputs(tmp_path):
    "Outputs (text and PNG plots) are saved, flagged cells keep what they had, nbdev_clean keeps outputs and is stable."
    ex = _load_tool('execute_notebooks')
    old_out = {'output_type': 'stream', 'name': 'stdout', 'text': 'committed earlier\n'}
    nb = _nb([_md('# T'), _code('import os\nx = 6 * 7\nx'), _code('#| slow\nraise RuntimeError("slow cell ran")', [old_out]),
              _code('#| eval: false\nraise RuntimeError("eval false ran")'),
              _code('import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]);'),
              _code("print(os.environ['TRITON_INTERPRET'], os.getcwd(), os.environ.get('SENSQ_TEST_CALLER'), os.environ.get('SENSQ_TEST_EXTRA'))")])
    p = tmp_path/'nbs'/'t.ipynb'; p.parent.mkdir(); p.write_text(json.dumps(nb))
    os.environ['SENSQ_TEST_CALLER'] = 'kept'        # the caller's environment reaches the kernel (thread counts, caches)
    try: ex.execute(p, skip={'slow', 'cuda'}, timeout=120, env={'SENSQ_TEST_EXTRA': 'added'})
    finally: del os.environ['SENSQ_TEST_CALLER']
    assert 'SENSQ_TEST_EXTRA' not in os.environ, 'execute must restore the environment'
    import nbformat
    cells = nbformat.read(p, as_version=4).cells
    assert cells[1]['outputs'][0]['data']['text/plain'] == '42'
    assert [dict(o) for o in cells[2]['outputs']] == [old_out] and cells[3]['outputs'] == []
    assert any('image/png' in o.get('data', {}) for o in cells[4]['outputs'])
    assert cells[5]['outputs'][0]['text'].split() == ['1', str(p.parent), 'kept', 'added']  # test env, notebook's folder, caller's env
    assert not list(p.parent.glob('.*.tmp'))
    ex.nbdev_clean(p); once = p.read_text(); ex.nbdev_clean(p)
    assert p.read_text() == once and nbformat.reads(once, as_version=4).cells[1].outputs, 'nbdev_clean must keep outputs and be stable'
    assert nbformat.reads(once, as_version=4).cells[1].execution_count is None


def test_failed_execution_leaves_notebook(tmp_path):
    from nbclient.exceptions import CellExecutionError
    ex = _load_tool('execute_notebooks')
    p = tmp_path/'f.ipynb'; p.write_text(json.dumps(_nb([_code('1 + 1'), _code('raise ValueError("boom")')])))
    before = p.read_bytes()
    with pytest.raises(CellExecutionError, match='boom'): ex.execute(p, timeout=120)
    assert p.read_bytes() == before
