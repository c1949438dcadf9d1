#!/usr/bin/env python
"""Build the sensq docs site offline: nbdev's processed notebooks rendered to static HTML without Quarto.

`nbdev_docs` renders the docs with Quarto, which no registry reachable from our machines ships. This script
runs the same first stage as `nbdev_docs` -- nbdev's `nbdev_proc_nbs`, which writes the processed notebooks
(frontmatter, `show_doc` outputs, hidden/export cells removed) to `_proc/` -- and then renders every processed
notebook with nbconvert's `HTMLExporter` (the JupyterLab template), applying the Quarto cell options nbdev relies
on (`echo`, `output: asis`, `include`, `code-fold`, ...). Every page gets a title block, a sidebar linking every
page (in the order of nbdev's `sidebar.yml`) and a table of contents; other files in `_proc/` (css, images) are
copied. The site is built in a temporary folder next to the output and renamed into place, so a failed build
leaves the previous site untouched.

The site is self-contained: MathJax (Debian's `libjs-mathjax`, installed by `tools/ensure_chromium.sh`) is copied
into `_site/_static/mathjax/` (the parts the TeX-AMS_CHTML configuration loads, ~1.6 MB) and every page points at
that copy by a relative URL, so a site copied to another machine (or opened from a USB stick) renders its math
without the network.

Usage: python tools/build_docs_offline.py [--root .] [--out _site] [--n-workers 0] [--force]
                                          [--mathjax-dir /usr/share/javascript/mathjax | --mathjax-url URL]
"""
from __future__ import annotations
import argparse, html, os, posixpath, re, shutil, sys, tempfile, time, traceback
from pathlib import Path

__all__ = ['proc_nbs_offline', 'quarto_cells', 'copy_mathjax', 'build_site', 'main']

MATHJAX_DIR = Path('/usr/share/javascript/mathjax')  # Debian's libjs-mathjax (MathJax 2.7)
MATHJAX_CONFIG = 'TeX-AMS_CHTML'
_MATHJAX_SITE = '_static/mathjax'
# what MathJax 2's TeX-AMS_CHTML configuration loads: the loader, its combined configuration, the TeX input, the
# CommonHTML output with its font data, the element jax, the extensions it may pull in, and the TeX web fonts
_MATHJAX_PARTS = ('MathJax.js', f'config/{MATHJAX_CONFIG}.js', 'config/local', 'jax/input/TeX', 'jax/output/CommonHTML',
                  'jax/element', 'extensions', 'fonts/HTML-CSS/TeX/woff')


def copy_mathjax(src: Path, dest: Path) -> Path:
    "Copy the parts of a MathJax 2 installation `src` that the site uses into `dest` (links followed); return dest."
    src = Path(src)
    if not (src/'MathJax.js').is_file() or not (src/'config'/f'{MATHJAX_CONFIG}.js').is_file():
        raise FileNotFoundError(f'no MathJax 2 with config/{MATHJAX_CONFIG}.js in {src}: install Debian\'s libjs-mathjax '
                                '(bash tools/ensure_chromium.sh) or pass --mathjax-dir / --mathjax-url')
    for part in _MATHJAX_PARTS:
        s, d = src/part, dest/part
        if not s.exists(): continue
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir(): shutil.copytree(s, d, symlinks=False, dirs_exist_ok=True)
        else: shutil.copy2(s, d)
    return dest
_SKIP_COPY = {'_quarto.yml', 'nbdev.yml', 'sidebar.yml', '_brand.yml'}
_PAGE_SUFFIXES = ('.ipynb',)


# ---------------------------------------------------------------- stage 1: nbdev's processing (no Quarto needed)
def proc_nbs_offline(n_workers: int | None = None, force: bool = False) -> Path:
    "Run nbdev's `nbdev_proc_nbs` in the current project; return the `_proc` folder."
    import nbdev.quarto as nq
    from nbdev.config import get_config
    # `_pre_docs` first calls `_ensure_quarto`, which, when Quarto is missing, tries `sudo dpkg -i` of a
    # downloaded .deb and then `pip install -e .[dev]`: never wanted here. Everything else is nbdev's own
    # sequence: refresh nbdev.yml, build _modidx, write sidebar.yml, process notebooks into _proc/.
    nq._ensure_quarto = lambda: None
    kw = {'force': force}
    if n_workers is not None: kw['n_workers'] = n_workers
    nq.nbdev_proc_nbs.__wrapped__(**kw)
    return get_config().config_path/'_proc'


# ---------------------------------------------------------------- stage 2: Quarto cell semantics on a notebook
_re_dir = re.compile(r'^\s*#\|\s?(.*)$')
_re_kv = re.compile(r'^([\w.-]+)\s*:\s*(.*)$')


def _parse_directives(src: str):
    "Split leading Quarto/nbdev `#|` lines off `src`: return (options dict, remaining source)."
    import yaml
    lines, opts, i = src.splitlines(), {}, 0
    while i < len(lines) and _re_dir.match(lines[i]):
        body = _re_dir.match(lines[i]).group(1).strip()
        m = _re_kv.match(body)
        if m:
            try: val = yaml.safe_load(m.group(2)) if m.group(2).strip() else None
            except yaml.YAMLError: val = m.group(2).strip()
            opts[m.group(1)] = val
        elif body: opts[body.split()[0]] = True  # nbdev flag such as `exports`, `slow`
        i += 1
    return opts, '\n'.join(lines[i:]).strip('\n')


def _frontmatter(nb) -> dict:
    "Pop the YAML frontmatter raw cell nbdev's `FrontmatterProc` writes; return its fields."
    import yaml
    for i, c in enumerate(nb.cells):
        if c.cell_type != 'raw': continue
        s = c.source.strip()
        if s.startswith('---') and s.endswith('---'):
            try: fm = yaml.safe_load(s.strip('-').strip()) or {}
            except yaml.YAMLError: fm = {}
            if isinstance(fm, dict):
                del nb.cells[i]
                return fm
        break
    return {}


def _false(v): return v is False or (isinstance(v, str) and v.lower() == 'false')


def _asis_markdown(outputs) -> str:
    "The raw markdown Quarto emits for an `output: asis` cell."
    parts = []
    for o in outputs:
        if o.output_type == 'stream': parts.append(o.text)
        elif o.output_type in ('display_data', 'execute_result'):
            d = o.get('data', {})
            for mime in ('text/markdown', 'text/html', 'text/plain'):
                if mime in d:
                    parts.append(d[mime] if isinstance(d[mime], str) else ''.join(d[mime]))
                    break
    return '\n\n'.join(p.strip('\n') for p in parts if p)


_re_fdiv = re.compile(r'^:::+[ \t]*(?:\{([^}\n]*)\}|([A-Za-z][\w-]*))?[ \t]*:*[ \t]*$', re.MULTILINE)


def _fenced_divs(md: str) -> str:
    "Quarto fenced divs (`::: {.callout-note}` ... `:::`) as HTML divs whose inside is still markdown."
    def rep(m):
        if m.group(1) is None and m.group(2) is None: return '\n\n</div>\n\n'
        cls = m.group(2) or ' '.join(t[1:] for t in m.group(1).split() if t.startswith('.'))
        return f'\n\n<div class="{html.escape(cls)}">\n\n'
    return _re_fdiv.sub(rep, md)


_re_attr_tok = re.compile(r'([.#][\w:-]+)|([\w-]+)=("[^"]*"|\'[^\']*\'|\S+)')
_re_link_attrs = re.compile(r'(!?)\[([^\]\n]*)\]\(([^)\s]+)\)\{([^}\n]*)\}')
_re_head_attrs = re.compile(r'^(#{1,6}[ \t]+.*?)[ \t]*\{([^}\n]*)\}[ \t]*$', re.MULTILINE)
_re_code_span = re.compile(r'(```.*?```|`[^`\n]*`)', re.DOTALL)


def _attrs(spec: str) -> str:
    "Pandoc attributes `#id .class key=value` as HTML attributes."
    ids, classes, kv = [], [], []
    for m in _re_attr_tok.finditer(spec):
        if m.group(1): (ids if m.group(1)[0] == '#' else classes).append(m.group(1)[1:])
        else: kv.append(f'{m.group(2)}="{html.escape(m.group(3).strip(chr(34)).strip(chr(39)))}"')
    res = ([f'id="{html.escape(ids[0])}"'] if ids else []) + ([f'class="{html.escape(" ".join(classes))}"'] if classes else [])
    return ' '.join(res + kv)


def _quarto_md(md: str) -> str:
    """Quarto/Pandoc markdown that nbconvert's markdown renderer lacks, as HTML: fenced divs and attributes
    (`[txt](url){target=_blank}` from show_doc, `## Head {#id}`); code spans and blocks are left alone."""
    def link(m):
        a = _attrs(m.group(4))
        if m.group(1): return f'<img src="{html.escape(m.group(3))}" alt="{html.escape(m.group(2))}" {a}>'
        return f'<a href="{html.escape(m.group(3))}" {a}>{html.escape(m.group(2))}</a>'
    def head(m):
        ids = [t[1:] for t in m.group(2).split() if t.startswith('#')]
        return m.group(1) + (f' <span id="{html.escape(ids[0])}"></span>' if ids else '')
    parts = _re_code_span.split(md)  # leave code alone
    for i in range(0, len(parts), 2): parts[i] = _fenced_divs(_re_head_attrs.sub(head, _re_link_attrs.sub(link, parts[i])))
    return ''.join(parts)


def quarto_cells(nb) -> dict:
    "Apply the Quarto options of nbdev's processed notebook `nb` in place; return its frontmatter."
    from nbformat.v4 import new_markdown_cell
    fm = _frontmatter(nb)
    cells = []
    for c in nb.cells:
        if c.cell_type == 'markdown':
            c.source = _quarto_md(c.source)
            if c.source.strip(): cells.append(c)
            continue
        if c.cell_type != 'code':
            cells.append(c)
            continue
        opts, c.source = _parse_directives(c.source)
        if _false(opts.get('include')): continue
        outs = c.get('outputs', [])
        if _false(opts.get('warning')): outs = [o for o in outs if not (o.output_type == 'stream' and o.name == 'stderr')]
        if opts.get('output') == 'asis':
            md = _asis_markdown(outs)
            if not _false(opts.get('echo')) and c.source.strip():
                c.outputs = []
                cells.append(c)
            if md.strip(): cells.append(new_markdown_cell(_quarto_md(md)))
            continue
        c.outputs = [] if _false(opts.get('output')) else outs
        if _false(opts.get('echo')) or not c.source.strip():
            c.metadata.setdefault('transient', {})['remove_source'] = True
        fold = opts.get('code-fold')
        if fold and not _false(fold) and c.source.strip():
            c.metadata['sq_fold'] = {'open': fold == 'show', 'summary': str(opts.get('code-summary') or 'Code')}
        if c.metadata.get('transient', {}).get('remove_source') and not c.outputs: continue
        cells.append(c)
    nb.cells = cells
    return fm


# ---------------------------------------------------------------- stage 3: HTML
_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block extra_css -%}{%- endblock extra_css -%}
{%- block notebook_css -%}
{%- for css in resources.sq.css %}
<link rel="stylesheet" href="{{ css }}">
{%- endfor %}
{%- endblock notebook_css -%}
{%- block body_header -%}
<body class="jp-Notebook sq-page" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<header class="sq-navbar"><a href="{{ resources.sq.home }}">{{ resources.sq.site_title | e }}</a></header>
<div class="sq-layout">
<nav class="sq-sidebar" aria-label="pages">{{ resources.sq.nav }}</nav>
<main class="sq-content">
<header id="title-block-header">
<h1 class="title">{{ resources.sq.title_html }}</h1>
{%- if resources.sq.description %}
<div class="description">{{ resources.sq.description_html }}</div>
{%- endif %}
</header>
{%- endblock body_header -%}
{% block input_group -%}
{%- if cell.metadata.sq_fold -%}
<details class="sq-fold"{% if cell.metadata.sq_fold.open %} open{% endif %}><summary>{{ cell.metadata.sq_fold.summary | e }}</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock input_group %}
{#- pygments already escapes the code it highlights; the lab template's extra `clean_html` (bleach) pass per
    code cell is most of the rendering time -#}
{% block input %}
<div class="jp-CodeMirrorEditor jp-Editor jp-InputArea-editor" data-type="inline">
     <div class="cm-editor cm-s-jupyter">
{{ cell.source | highlight_code(metadata=cell.metadata) }}
     </div>
</div>
{%- endblock input %}
{% block error -%}
<div class="sq-error-output">
{{ super() }}
</div>
{%- endblock error %}
{% block body_footer %}
</main>
<nav class="sq-toc" aria-label="on this page"><!--SQ-TOC--></nav>
</div>
</body>
{% endblock body_footer %}
"""

_LAYOUT_CSS = """
/* from nbconvert's lab template */
* { -webkit-print-color-adjust: exact; }
a.anchor-link { display: none; }
.jp-InputArea-editor { overflow: hidden; }
.cm-editor.cm-s-jupyter .highlight pre { padding: var(--jp-code-padding) 4px; margin: 0; font-family: inherit;
  font-size: inherit; line-height: inherit; color: inherit; }
.jp-OutputArea-output pre { line-height: inherit; font-family: inherit; }
.jp-RenderedText pre { color: var(--jp-content-font-color1); font-size: var(--jp-code-font-size); }
.jp-Collapser { display: none; }
@page { margin: 0.5in; }
@media print { .jp-Cell-inputWrapper, .jp-Cell-outputWrapper { display: block; } }
/* sensq offline layout */
body.sq-page { margin: 0; padding: 0;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Liberation Sans", sans-serif; }
.sq-navbar { background: #2780e3; padding: .6rem 1.2rem; }
.sq-navbar a { color: #fff; font-weight: 600; font-size: 1.2rem; text-decoration: none; }
.sq-layout { display: flex; align-items: flex-start; max-width: 1400px; margin: 0 auto; }
.sq-sidebar, .sq-toc { position: sticky; top: 0; max-height: 100vh; overflow-y: auto; font-size: .9rem;
  padding: 1rem; box-sizing: border-box; }
.sq-sidebar { flex: 0 0 240px; }
.sq-toc { flex: 0 0 220px; }
.sq-sidebar ul, .sq-toc ul { list-style: none; padding-left: .8rem; margin: .2rem 0; }
.sq-sidebar > ul, .sq-toc > ul { padding-left: 0; }
.sq-sidebar li, .sq-toc li { margin: .25rem 0; }
.sq-sidebar a, .sq-toc a { text-decoration: none; color: #343a40; }
.sq-sidebar a.active { color: #2780e3; font-weight: 600; }
.sq-section { font-weight: 600; margin-top: .6rem; }
.sq-content { flex: 1 1 auto; min-width: 0; padding: 1rem 2rem 3rem; }
#title-block-header h1.title { margin-bottom: .2rem; }
.jp-InputArea, .jp-InputArea-editor, .jp-OutputArea-output pre { overflow-x: auto; }
[class*="callout-"] { border-left: 4px solid #2780e3; background: #f5f9fe; padding: .4rem 1rem; margin: 1rem 0; }
.callout-warning, .callout-caution { border-left-color: #ff7518; background: #fff8f3; }
.callout-important { border-left-color: #ff0039; background: #fff3f5; }
.callout-tip { border-left-color: #3fb618; background: #f5fbf3; }
.sq-fold > summary { cursor: pointer; color: #6c757d; }
.sq-index dt { margin-top: .8rem; font-weight: 600; }
.sq-index dd { margin-left: 1rem; }
@media (max-width: 900px) { .sq-toc { display: none; } .sq-sidebar { flex-basis: 180px; } }
"""


_LAB_CSS, _SITE_CSS = '_static/jupyterlab.css', '_static/sensq-offline.css'


def _lab_css(ex) -> str:
    "The JupyterLab light theme css nbconvert's lab template would inline into every page."
    for d in ex.template_paths:
        idx = Path(d)/'static'/'index.css'
        if idx.exists() and (Path(d)/'static'/'theme-light.css').exists():
            return idx.read_text(encoding='utf-8') + '\n' + (Path(d)/'static'/'theme-light.css').read_text(encoding='utf-8')
    raise RuntimeError("build_docs_offline: nbconvert's lab template css (static/index.css) not found")


def _exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    ex = HTMLExporter(template_name='lab', extra_loaders=[DictLoader({'sq_offline.html.j2': _TEMPLATE})],
                      template_file='sq_offline.html.j2')
    ex.exclude_input_prompt = ex.exclude_output_prompt = True
    return ex


def _sidebar_entries(proc: Path, sources: list[str]):
    "Pages in `sidebar.yml` order as a tree: str (relative path) or (section, [entries]); unlisted pages appended."
    import yaml
    tree, seen = [], set()
    def walk(items, out):
        for it in items or []:
            if isinstance(it, str):
                if it in sources and it not in seen: seen.add(it); out.append(it)
            elif isinstance(it, dict):
                if 'contents' in it:
                    sub = []
                    walk(it['contents'] if isinstance(it['contents'], list) else [it['contents']], sub)
                    if sub: out.append((str(it.get('section', '')), sub))
                elif 'href' in it or 'file' in it: walk([it.get('href') or it.get('file')], out)
    sb = proc/'sidebar.yml'
    if sb.exists():
        try: walk(((yaml.safe_load(sb.read_text()) or {}).get('website', {}).get('sidebar', {}) or {}).get('contents'), tree)
        except yaml.YAMLError: pass
    tree += [s for s in sources if s not in seen]
    return tree


def _rel(from_page: str, to: str) -> str:
    "Relative URL from site page `from_page` to site path `to` (both posix, relative to the site root)."
    return posixpath.relpath(to, posixpath.dirname(from_page) or '.')


def _nav_html(tree, pages, cur: str) -> str:
    def items(entries):
        out = []
        for e in entries:
            if isinstance(e, tuple):
                out.append(f'<li><div class="sq-section">{html.escape(e[0])}</div><ul>{items(e[1])}</ul></li>')
            else:
                p = pages[e]
                act = ' class="active" aria-current="page"' if p['out'] == cur else ''
                out.append(f'<li><a href="{html.escape(_rel(cur, p["out"]))}"{act}>{html.escape(p["title"].replace("`", ""))}</a></li>')
        return ''.join(out)
    return f'<ul>{items(tree)}</ul>'


_re_href = re.compile(r'(<a\b[^>]*?\bhref=")([^"]*)(")')
_re_head = re.compile(r'<h([23])\b([^>]*?)\bid="([^"]*)"([^>]*)>(.*?)</h\1>', re.DOTALL)
_re_id = re.compile(r'\bid="([^"]*)"')


def _postprocess(doc: str, page: dict, pages_by_src: dict, outs: set, doc_url: str) -> str:
    "Fix links like Quarto does (.ipynb -> page, absolute doc-site links -> relative), add Quarto-style ids and a TOC."
    cur, src_dir = page['out'], posixpath.dirname(page['src'])
    def link(m):
        href = html.unescape(m.group(2))
        path = None
        if doc_url and href.startswith(doc_url + '/'):
            path, _, frag = href[len(doc_url) + 1:].partition('#')
            if path not in outs: path = None
        elif not re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:|^#|^/', href):
            p, _, frag = href.partition('#')
            target = posixpath.normpath(posixpath.join(src_dir, p))
            if target in pages_by_src: path = pages_by_src[target]['out']
        if path is None: return m.group(0)
        return m.group(1) + html.escape(_rel(cur, path) + (f'#{frag}' if frag else '')) + m.group(3)
    doc = _re_href.sub(link, doc)
    start = max(doc.find('<main'), 0)
    head, body = doc[:start], doc[start:]
    ids, toc = set(_re_id.findall(doc)), []
    def heading(m):
        hid = html.unescape(m.group(3))
        text = html.unescape(re.sub(r'<[^>]+>', '', m.group(5))).replace('¶', '').strip()
        toc.append((m.group(1), hid, ' '.join(text.split())))
        low = hid.lower()  # Quarto's ids are lower case; nbdev's doc links (`quant.html#rtn`) use them
        extra = ''
        if low not in ids: extra = f'<span id="{html.escape(low)}"></span>'; ids.add(low)
        return f'<h{m.group(1)}{m.group(2)}id="{m.group(3)}"{m.group(4)}>{extra}{m.group(5)}</h{m.group(1)}>'
    body = _re_head.sub(heading, body)
    toc_html = ('<div class="sq-section">On this page</div><ul>' + ''.join(
        f'<li class="toc-h{n}"><a href="#{html.escape(i)}">{html.escape(t)}</a></li>' for n, i, t in toc) + '</ul>') if toc else ''
    return head + body.replace('<!--SQ-TOC-->', toc_html, 1)


def _page_list(proc: Path, nbs: Path, recursive: bool = True) -> list[str]:
    "Processed pages of the current source notebooks (posix paths relative to nbs/), globbed as nbdev does."
    from fastcore.xtras import globtastic
    srcs = globtastic(nbs, file_glob='*.ipynb', skip_folder_re=r'^[_.]', skip_file_re=r'^[_.]', recursive=recursive)
    out = []
    for s in map(Path, srcs):
        rel = s.relative_to(nbs).as_posix()
        if s.suffix in _PAGE_SUFFIXES and (proc/rel).exists(): out.append(rel)
    return sorted(out)


_CELL_KEYS = {'id', 'cell_type', 'metadata', 'source', 'outputs', 'execution_count', 'attachments'}


def _read_nb(path: Path):
    "Read a processed notebook, dropping the non-nbformat cell keys nbdev leaves in (e.g. `has_sd`)."
    import json, nbformat
    d = json.loads(path.read_text(encoding='utf-8'))
    for c in d.get('cells', []):
        for k in set(c) - _CELL_KEYS: del c[k]
    return nbformat.reads(json.dumps(d), as_version=4)


def build_site(proc: Path, out: Path, site_title: str, doc_url: str = '', nbs: Path | None = None,
               mathjax_url: str | None = None, recursive: bool = True, mathjax_dir: Path | None = None) -> list[dict]:
    """Render every processed notebook in `proc` to `out` (replaced atomically); return the page records. MathJax is
    copied from `mathjax_dir` into the site and referenced relatively; else `mathjax_url` (or nbconvert's CDN URL)."""
    nbs = nbs or proc
    sources = _page_list(proc, nbs, recursive)
    if not sources: raise SystemExit(f'build_docs_offline: no processed notebooks in {proc}')
    pages, nbs_read = {}, {}
    for rel in sources:
        nb = _read_nb(proc/rel)
        fm = quarto_cells(nb)
        ofile = fm.get('output-file') or Path(rel).with_suffix('.html').name
        odir = posixpath.dirname(rel)
        outp = posixpath.join(odir, ofile) if odir else ofile
        title = str(fm.get('title') or '').strip()
        pages[rel] = dict(src=rel, out=outp, title=title or Path(rel).stem, has_title=bool(title),
                          description=str(fm.get('description') or '').strip())
        nbs_read[rel] = nb
    dup = {}
    for p in pages.values(): dup.setdefault(p['out'], []).append(p['src'])
    clash = {k: v for k, v in dup.items() if len(v) > 1}
    if clash: raise SystemExit(f'build_docs_offline: notebooks render to the same page: {clash}')
    tree = _sidebar_entries(proc, sources)
    outs = {p['out'] for p in pages.values()}

    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.parent))
    umask = os.umask(0); os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the site should be readable like any build output
    try:
        # assets: everything nbdev copied to _proc that is not a page or Quarto config
        for f in proc.rglob('*'):
            rel = f.relative_to(proc)
            if f.is_dir() or any(part.startswith('.') for part in rel.parts) or f.suffix == '.ipynb': continue
            if rel.as_posix() in _SKIP_COPY or rel.parts[0] in ('_docs', '_site'): continue
            (tmp/rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, tmp/rel)
        home = 'index.html'
        ex = _exporter()
        if mathjax_dir is not None: copy_mathjax(mathjax_dir, tmp/_MATHJAX_SITE)
        elif mathjax_url: ex.mathjax_url = mathjax_url
        (tmp/'_static').mkdir(exist_ok=True)
        (tmp/_LAB_CSS).write_text(_lab_css(ex), encoding='utf-8')
        (tmp/_SITE_CSS).write_text(_LAYOUT_CSS, encoding='utf-8')
        for rel, nb in nbs_read.items():
            p = pages[rel]
            plain = p['title'].replace('`', '')
            nb.metadata['title'] = f"{plain} – {site_title}" if plain != site_title else site_title
            if mathjax_dir is not None: ex.mathjax_url = f"{_rel(p['out'], _MATHJAX_SITE + '/MathJax.js')}?config={MATHJAX_CONFIG}"
            css = [_rel(p['out'], c) for c in (_LAB_CSS, 'styles.css', _SITE_CSS) if (tmp/c).exists()]
            res = {'sq': dict(css=css, nav=_nav_html(tree, pages, p['out']), description_html=_md_html(p['description']),
                              title_html=_md_html(p['title'], inline=True),
                              title=p['title'], description=p['description'], site_title=site_title,
                              home=_rel(p['out'], home)),
                   'metadata': {'name': p['title'], 'path': str((proc/rel).parent)}}
            try: body, _ = ex.from_notebook_node(nb, resources=res)
            except Exception as e: raise RuntimeError(f'build_docs_offline: rendering {rel} failed: {e}') from e
            body = _postprocess(body, p, pages, outs, doc_url)
            dest = tmp/p['out']
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(body, encoding='utf-8')
        if 'index.html' not in outs:  # no index notebook: a listing page links every page
            (tmp/'index.html').write_text(_index_page(tree, pages, site_title, tmp), encoding='utf-8')
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f'.{out.name}.old-', dir=out.parent))
            os.rename(out, old/'site')
        os.rename(tmp, out)
        if old: shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [pages[s] for s in sources]


def _md_html(md: str, inline: bool = False) -> str:
    "Markdown (a frontmatter title or description) as HTML, as Quarto renders it."
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    res = markdown2html_mistune(md).strip() if md else ''
    if inline and res.startswith('<p>') and res.endswith('</p>'): res = res[3:-4]
    return res


def _index_page(tree, pages, site_title, site: Path) -> str:
    def items(entries):
        out = []
        for e in entries:
            if isinstance(e, tuple): out.append(f'<dt>{html.escape(e[0])}</dt><dd><dl>{items(e[1])}</dl></dd>')
            else:
                p = pages[e]
                out.append(f'<dt><a href="{html.escape(p["out"])}">{html.escape(p["title"].replace("`", ""))}</a></dt>'
                           f'<dd>{_md_html(p["description"])}</dd>')
        return ''.join(out)
    css = ''.join(f'<link rel="stylesheet" href="{c}">' for c in (_LAB_CSS, 'styles.css', _SITE_CSS) if (site/c).exists())
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(site_title)}</title>'
            f'{css}</head><body class="sq-page">'
            f'<header class="sq-navbar"><a href="index.html">{html.escape(site_title)}</a></header>'
            f'<div class="sq-layout"><nav class="sq-sidebar" aria-label="pages">{_nav_html(tree, pages, "index.html")}</nav>'
            f'<main class="sq-content"><header id="title-block-header"><h1 class="title">{html.escape(site_title)}</h1>'
            f'</header><dl class="sq-index">{items(tree)}</dl></main></div></body></html>\n')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--root', default=str(Path(__file__).resolve().parent.parent), help='project root (has settings.ini)')
    ap.add_argument('--out', default=None, help='output folder (default: <root>/_site)')
    ap.add_argument('--n-workers', type=int, default=0,
                    help="worker processes for nbdev's notebook processing; 0 (default) runs them in this process, "
                         "which on 2 cores is ~2.5x faster than nbdev's default (one process per core, each "
                         "importing torch again)")
    ap.add_argument('--force', action='store_true', help="ignore nbdev's _proc cache")
    mj = ap.add_mutually_exclusive_group()
    mj.add_argument('--mathjax-dir', type=Path, default=None,
                    help=f"MathJax 2 installation copied into the site (default: {MATHJAX_DIR}, Debian's libjs-mathjax)")
    mj.add_argument('--mathjax-url', default=None,
                    help="load MathJax from this URL instead of copying it (e.g. a CDN: the site then needs the network)")
    a = ap.parse_args(argv)
    if a.mathjax_url is None and a.mathjax_dir is None: a.mathjax_dir = MATHJAX_DIR
    if a.mathjax_dir is not None and not (a.mathjax_dir/'MathJax.js').is_file():
        raise SystemExit(f'build_docs_offline: no MathJax in {a.mathjax_dir}: run `bash tools/ensure_chromium.sh` (installs '
                         "Debian's libjs-mathjax), or pass --mathjax-dir DIR or --mathjax-url URL")
    root = Path(a.root).resolve()
    if not (root/'settings.ini').exists(): raise SystemExit(f'build_docs_offline: no settings.ini in {root}')
    out = Path(a.out).resolve() if a.out else root/'_site'
    os.chdir(root)
    # nbdev executes export/import/show_doc cells, which import the library: use this checkout's copy even when it
    # is not pip-installed (spawned workers inherit sys.path)
    sys.path.insert(0, str(root))
    from nbdev.config import get_config
    t0 = time.time()
    try: proc = proc_nbs_offline(a.n_workers, a.force)
    except Exception as e:
        traceback.print_exc()
        raise SystemExit(f'build_docs_offline: nbdev_proc_nbs failed (the site in {out} is unchanged): {e}')
    t1 = time.time()
    cfg = get_config()
    doc_url = (cfg.get('doc_host', '') + cfg.get('doc_baseurl', '')).rstrip('/')
    pages = build_site(proc, out, cfg.get('title') or cfg.lib_name, doc_url, nbs=cfg.nbs_path,
                       mathjax_url=a.mathjax_url, recursive=str(cfg.get('recursive', True)).lower() == 'true',
                       mathjax_dir=a.mathjax_dir)
    t2 = time.time()
    for p in pages: print(f"{p['src']} -> {out/p['out']}  ({p['title']})")
    print(f'built {len(pages)} pages in {out} (nbdev_proc_nbs {t1 - t0:.1f} s, render {t2 - t1:.1f} s)')


if __name__ == '__main__':
    main()
    # nbdev ran the notebooks' import cells in this process (torch, IPython shells); tearing that down takes ~15 s
    # on 2 busy cores, longer than rendering. Everything is written and renamed into place: leave at once.
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)
