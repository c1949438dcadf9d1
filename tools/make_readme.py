"""Render nbs/index.ipynb to README.md offline (nbdev's own `nbdev_readme` needs Quarto, which these machines lack).

Markdown cells are copied; code cells become ```python blocks followed by their text outputs; cells marked
`#| hide` are left out and `#| ...` directives are stripped. `--check` exits 1 when README.md is out of date.
"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _directives(src:str) -> tuple[set, str]:
    lines = src.splitlines()
    flags = {l[3:].strip().split()[0] for l in lines if l.startswith('#| ') and l[3:].strip()}
    return flags, '\n'.join(l for l in lines if not l.startswith('#|')).strip()

def _outputs(cell) -> str:
    parts = []
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream' and o.get('name') != 'stderr': parts.append(''.join(o['text']))
        elif 'data' in o and 'text/plain' in o['data']: parts.append(''.join(o['data']['text/plain']))
    text = ''.join(parts).rstrip()
    return f"\n\n```\n{text}\n```" if text else ''

def render(nb_path:Path=ROOT/'nbs'/'index.ipynb') -> str:
    "README text for the notebook at `nb_path`."
    cells = json.loads(nb_path.read_text())['cells']
    out = []
    for c in cells:
        src = ''.join(c['source'])
        flags, body = _directives(src)
        if 'hide' in flags or not body: continue
        if c['cell_type'] == 'markdown': out.append(body)
        elif c['cell_type'] == 'code': out.append(f"```python\n{body}\n```" + _outputs(c))
    return '<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n\n' + '\n\n'.join(out) + '\n'

if __name__ == '__main__':
    text, readme = render(), ROOT/'README.md'
    if '--check' in sys.argv:
        ok = readme.exists() and readme.read_text() == text
        print('README.md is in sync with nbs/index.ipynb' if ok else 'README.md is out of date: run `python tools/make_readme.py`')
        sys.exit(0 if ok else 1)
    tmp = readme.with_suffix('.md.tmp'); tmp.write_text(text); tmp.replace(readme)
