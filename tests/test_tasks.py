"Plain-Python tests for sensq.tasks: user task YAMLs, tags, the folder guard, and the one-line errors (offline, no extra)."
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest

pytest.importorskip('lm_eval')  # the `eval` extra; `make venv` installs it
from sensq.tasks import (LOCAL_TASK, MissingExtra, TaskDataUnavailable, eval_tasks_cli, run_tasks, select_tasks)
from sensq.models import tiny_llama
from sensq.data import byte_tokenizer

ROOT = Path(__file__).resolve().parent.parent
ITEMS = [{"q": "Is fire hot?", "options": ["yes", "no"], "gold": 0},
         {"q": "Is ice hot?", "options": ["yes", "no"], "gold": 1},
         {"q": "Do fish swim?", "options": ["yes", "no"], "gold": 0}]


@pytest.fixture(scope='module')
def tiny(): return tiny_llama(seed=1), byte_tokenizer()


def write_task(folder: Path, name='my_yesno', loader='sensq', tag=None) -> Path:
    "A user's task YAML with its items in a JSONL file beside it; `loader` 'sensq' (relative path) or 'json' (absolute)."
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'items.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in ITEMS))
    data = ("custom_dataset: !function sensq.tasks.local_dataset\ndataset_kwargs:\n  data_files:\n    test: items.jsonl\n"
            if loader == 'sensq' else
            f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'items.jsonl'}\n")
    y = folder / f'{name}.yaml'
    y.write_text(f"task: {name}\n{data}test_split: test\noutput_type: multiple_choice\n"
                 "doc_to_text: \"Q: {{q}}\\nA:\"\ndoc_to_choice: \"{{options}}\"\ndoc_to_target: gold\n"
                 "metric_list:\n  - metric: acc\nmetadata:\n  version: 2.5\n" + (f"tag: {tag}\n" if tag else ''))
    return y


@pytest.mark.parametrize('loader', ['sensq', 'json'])
def test_user_yaml_runs_from_any_working_directory(tmp_path, tiny, loader, monkeypatch):
    y = write_task(tmp_path / 'tasks', loader=loader)
    monkeypatch.chdir(tmp_path)  # relative data files resolve against the YAML's folder, not the working directory
    table, res = eval_tasks_cli(*tiny, str(y), batch_size=2, prefix_token_id=0)
    t = res['tasks']['my_yesno']
    assert (t['version'], t['samples'], t['source']) == (2.5, 3, str(y.resolve()))
    assert 0 <= t['metrics']['acc']['value'] <= 1 and t['metrics']['acc']['stderr'] is not None
    assert '| my_yesno' in table and json.loads(json.dumps(res)) == res


def test_tag_runs_its_tasks_and_names_their_sources(tmp_path, tiny):
    write_task(tmp_path / 't', 'yes_a', tag='yes_tag')
    write_task(tmp_path / 't', 'yes_b', tag='yes_tag')
    sel = select_tasks('yes_tag', include_defaults=False, include_path=[tmp_path / 't'])
    res = run_tasks(*tiny, sel, limit=2, prefix_token_id=0)
    assert set(res['tasks']) == {'yes_a', 'yes_b'} and res['tasks']['yes_a']['samples'] == 2
    assert res['tasks']['yes_b']['source'] == str((tmp_path / 't' / 'yes_b.yaml').resolve())


def test_yaml_in_a_huge_folder_is_refused(tmp_path):
    y = write_task(tmp_path)
    for i in range(501):
        sub = tmp_path / 'junk' / str(i // 100); sub.mkdir(parents=True, exist_ok=True)
        (sub / f'{i}.yaml').write_text('x: 1\n')
    with pytest.raises(ValueError, match='more than 500 .yaml files'):
        select_tasks(str(y), include_defaults=False)


def cli_like(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    "Run `code` the way `sensq <cmd>` reports errors (ValueError/FileNotFoundError/OSError -> one line on stderr)."
    wrapped = ("import sys\ntry:\n" + textwrap.indent(textwrap.dedent(code), '    ') +
               "\nexcept (ValueError, FileNotFoundError, OSError, ImportError) as e: sys.exit(f'sensq eval: error: {e}')\n")
    env = {**os.environ, 'PYTHONPATH': str(ROOT), **env_extra}
    return subprocess.run([sys.executable, '-c', wrapped], capture_output=True, text=True, env=env, timeout=300)


def test_offline_named_task_is_one_line():
    r = cli_like("""
        import lm_eval; from pathlib import Path
        from sensq.tasks import select_tasks
        select_tasks('arc_easy', include_defaults=False, include_path=[Path(lm_eval.__file__).parent/'tasks'/'arc'])
        """, {'HF_DATASETS_OFFLINE': '1', 'HF_HUB_OFFLINE': '1'})
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 1 and len(err) == 1, r.stderr
    for part in ("task 'arc_easy'", 'offline mode is set', 'allenai/ai2_arc', '--tasks path/to/task.yaml'):
        assert part in err[0], err[0]
    assert issubclass(TaskDataUnavailable, OSError)  # what `sensq`'s main prints as one line


def test_missing_extra_is_one_line():
    r = cli_like("""
        sys.modules['lm_eval'] = None  # as if lm-eval were not installed
        import sensq.tasks, sensq.cli, sensq.data  # importing sensq never needs the extra
        from sensq.models import tiny_llama
        from sensq.data import byte_tokenizer
        sensq.tasks.eval_tasks_cli(tiny_llama(), byte_tokenizer(), 'sensq_mc')
        """, {})
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "sensq eval: error: zero-shot tasks need lm-evaluation-harness, which is not installed: "
        "pip install 'sensq[eval]' (lm-eval==0.4.13)"], r.stderr
    assert issubclass(MissingExtra, ImportError)
