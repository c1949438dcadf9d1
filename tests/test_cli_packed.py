"End-to-end tests of the `sensq` command with packed checkpoints: quantize --save, loading, generate, export, --tasks."
import importlib.util, json, shutil, subprocess, sys
from pathlib import Path
import pytest
import torch
from safetensors import safe_open
from test_cli import ENV, run, one_error_line, no_load  # noqa: F401 (no_load is a fixture)
from sensq.cli import _tiny_fixture_dir
from sensq.core import MARKER_FILE

TASK = Path(__file__).resolve().parent.parent / 'sensq' / 'task_data' / 'sensq_mc.yaml'
IDS = [[72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101, 32, 99, 97]]  # "Hello, world!\nThe ca"

@pytest.fixture(scope='module')
def tiny(tmp_path_factory): return _tiny_fixture_dir(tmp_path_factory.mktemp('m') / 'tiny')

@pytest.fixture(scope='module')
def q3(tiny, tmp_path_factory):
    "RTN, 3 bits, groups of 16, saved packed; (folder, stdout, results row)."
    d = tmp_path_factory.mktemp('q')
    r = run('quantize', '--model', tiny, '--method', 'rtn', '--bits', 3, '--group', 16, '--seqlen', 64, '--eval_windows', 2,
            '--save', d / 'q3', '--out', d / 'q3.json', '--quiet')
    return d / 'q3', r.stdout, json.loads((d / 'q3.json').read_text())[0]

def quantized_layers(folder): return json.loads((folder / 'config.json').read_text())['quantization_config']['layers']

# ---------------------------------------------------------------- quantize --save writes the packed checkpoint

def test_save_writes_packed_checkpoint(q3, tiny):
    folder, stdout, row = q3
    assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER_FILE, 'config.json', 'generation_config.json',
                                                               'model.safetensors', 'sensq_quant.json', 'tokenizer.json', 'tokenizer_config.json'])
    cfg = json.loads((folder / 'config.json').read_text())
    assert cfg['quantization_config']['quant_method'] == 'sensq'
    layers = quantized_layers(folder)
    assert len(layers) == 14 and all(e['config']['bits'] == 3 and e['config']['group_size'] == 16 for e in layers.values())
    meta = json.loads((folder / 'sensq_quant.json').read_text())
    assert (meta['method'], meta['spec'], meta['chain'], meta['format']) == ('rtn', 'w3g16a', [], 'sensq-packed')
    assert meta['eval_protocol'].startswith('protocol default-2x64') and meta['ppl'] == pytest.approx(row['ppl'])
    # bits per weight counted independently: the bytes of each quantized layer's tensors in the file, over its weights
    with safe_open(str(folder / 'model.safetensors'), 'pt') as f:
        names = list(f.keys())
        nbytes = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in names
                     if k.rsplit('.', 1)[0] in layers and not k.endswith('.bias'))
        for ln in layers: assert f"{ln}.weight" not in names and f.get_tensor(f"{ln}.qweight").dtype == torch.int32
    with safe_open(str(tiny / 'model.safetensors'), 'pt') as f:
        weights = sum(f.get_tensor(f"{ln}.weight").numel() for ln in layers)
    assert row['stored_bits_per_weight'] == pytest.approx(8 * nbytes / weights, rel=1e-12)
    assert row['bits_per_weight'] == pytest.approx(8 * nbytes / weights, rel=1e-12)
    assert row['folder_bytes'] == sum(p.stat().st_size for p in folder.iterdir())
    assert f"{8 * nbytes / weights:.4g} bits per weight stored" in stdout and f"{row['folder_bytes'] / 2**20:.4g} MiB" in stdout

FRESH = r'''
import sys, json, torch
import sensq
from transformers import AutoModelForCausalLM, AutoTokenizer
d, ids, out = sys.argv[1], torch.tensor(json.loads(sys.argv[2])), sys.argv[3]
m = AutoModelForCausalLM.from_pretrained(d)
tok = AutoTokenizer.from_pretrained(d)
kinds = {n: type(x).__name__ for n, x in m.named_modules() if 'Linear' in type(x).__name__}
with torch.no_grad(): logits = m(ids).logits
x = tok('hello', return_tensors='pt')['input_ids']
g = m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False, pad_token_id=0)
torch.save({'logits': logits, 'kinds': kinds, 'text': tok.decode(g[0, x.shape[1]:], skip_special_tokens=True)}, out)
'''

def test_from_pretrained_in_fresh_process_equals_simulated(q3, tiny, tmp_path):
    "`import sensq` + `from_pretrained` in a new process: QuantLinear layers, logits of the simulated model, generate()."
    from sensq.models import load_model
    from sensq.eval import rtn_quantize_model
    from sensq.quant import QuantSpec
    folder = q3[0]
    r = subprocess.run([sys.executable, '-c', FRESH, str(folder), json.dumps(IDS), str(tmp_path / 'o.pt')],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    got = torch.load(tmp_path / 'o.pt')
    layers = quantized_layers(folder)
    assert got['kinds'] == {**dict.fromkeys(layers, 'QuantLinear'), 'lm_head': 'Linear'}  # lm_head is not quantized (the default)
    # the simulated model: RTN's dequantized weights in float32, the other tensors rounded to the fp16 they are stored in
    m, _ = load_model(str(tiny), progress=False)
    rtn_quantize_model(m, None, QuantSpec(3, 16))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.rsplit('.', 1)[0] not in layers: p.copy_(p.half().float())
        ref = m(torch.tensor(IDS)).logits
    # same weights, float32 arithmetic on both sides: differences only from summation order, far below 1e-4 of the scale
    assert (got['logits'] - ref).abs().max() <= 1e-4 * ref.abs().max()
    out = run('generate', '--model', folder, '--prompt', 'hello', '--max_new_tokens', 8, '--plain', '--device', 'cpu', '--quiet')
    assert out.stdout == got['text'] + '\n' and out.stderr == ''

def test_eval_packed_matches_quantize(q3, tmp_path):
    "`sensq eval --model DIR` scores the saved model; quantize --save reported the perplexity of what it saved."
    folder, _, row = q3
    run('eval', '--model', folder, '--seqlen', 64, '--eval_windows', 2, '--out', tmp_path / 'e.json', '--quiet')
    assert json.loads((tmp_path / 'e.json').read_text())[0]['ppl'] == pytest.approx(row['ppl'], rel=1e-5)

def test_quantize_saved_checkpoint_records_chain(q3, tmp_path):
    folder = q3[0]
    r = run('quantize', '--model', folder, '--method', 'gptq', '--bits', 2, '--group', 16, '--n_calib', 2, '--seqlen', 64,
            '--eval_windows', 1, '--save', tmp_path / 'q2', '--quiet')
    meta = json.loads((tmp_path / 'q2' / 'sensq_quant.json').read_text())
    assert meta['method'] == 'gptq' and meta['calib_windows'] == 2 and meta['calib_seqlen'] == 64 and meta['seed'] == 0
    assert [(c['method'], c['spec']) for c in meta['chain']] == [('rtn', 'w3g16a')] and 'chain' not in meta['chain'][0]
    assert 'quantized again after 1 earlier step' in r.stdout
    assert all(e['config']['bits'] == 2 for e in quantized_layers(tmp_path / 'q2').values())

# ---------------------------------------------------------------- bad checkpoints: one line naming the file or tensor

def test_truncated_packed_safetensors_one_line(q3, tmp_path, no_load):
    bad = tmp_path / 'bad'
    shutil.copytree(q3[0], bad)
    data = (bad / 'model.safetensors').read_bytes()
    (bad / 'model.safetensors').write_bytes(data[:-1000])
    for cmd in (['eval'], ['generate', '--prompt', 'hi'], ['quantize']):
        r = run(*cmd, '--model', bad, '--quiet', ok=False)
        assert f"{bad / 'model.safetensors'} is truncated or corrupt" in one_error_line(r, cmd[0], f'--model {bad}: ')

def test_mismatched_packed_checkpoint_one_line(q3, tmp_path):
    bad = tmp_path / 'bad'
    shutil.copytree(q3[0], bad)
    cfg = json.loads((bad / 'config.json').read_text())
    layer = sorted(cfg['quantization_config']['layers'])[0]
    cfg['quantization_config']['layers'][layer]['config']['bits'] = 4   # the stored codes are 3-bit
    (bad / 'config.json').write_text(json.dumps(cfg))
    r = run('eval', '--model', bad, '--seqlen', 64, '--eval_windows', 1, '--quiet', ok=False)
    assert f"tensor '{layer}.qweight' has shape" in one_error_line(r, 'eval', f'--model {bad}: ')

# ---------------------------------------------------------------- export

def test_export_rtn_writes_compressed_tensors(q3, tmp_path):
    folder = q3[0]
    r = run('export', folder, '--format', 'compressed-tensors', '--out', tmp_path / 'ct')
    assert r.stdout.startswith(f"exported {folder} to {tmp_path / 'ct'}: compressed-tensors")
    cfg = json.loads((tmp_path / 'ct' / 'config.json').read_text())['quantization_config']
    assert cfg['quant_method'] == 'compressed-tensors' and cfg['format'] == 'pack-quantized'
    with safe_open(str(tmp_path / 'ct' / 'model.safetensors'), 'pt') as f: names = set(f.keys())
    for ln in quantized_layers(folder):
        assert {f"{ln}.weight_packed", f"{ln}.weight_scale", f"{ln}.weight_zero_point", f"{ln}.weight_shape"} <= names
    assert json.loads((tmp_path / 'ct' / MARKER_FILE).read_text())['writer'] == 'sensq export'
    if importlib.util.find_spec('compressed_tensors'):  # transformers + compressed-tensors load it with sensq's logits
        import warnings
        from transformers import AutoModelForCausalLM, CompressedTensorsConfig
        from sensq.quantlinear import load_packed
        ours, _ = load_packed(folder)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # asymmetric grid: only the dequantize route loads it (see 43_export)
            theirs = AutoModelForCausalLM.from_pretrained(tmp_path / 'ct', quantization_config=CompressedTensorsConfig(dequantize=True))
        with torch.no_grad(): lo, lt = ours(torch.tensor(IDS)).logits, theirs(torch.tensor(IDS)).logits
        # identical weights, float32 arithmetic on both sides: only summation order may differ
        assert (lt - lo).abs().max() <= 1e-5 * lo.abs().max()
    again = run('export', folder, '--out', tmp_path / 'ct', ok=False)
    assert '--overwrite' in one_error_line(again, 'export', f"--out {tmp_path / 'ct'}: ")
    run('export', folder, '--out', tmp_path / 'ct', '--overwrite')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ct']

@pytest.mark.parametrize('args, why', [
    (['--method', 'spqr', '--tau', 0.2, '--n_calib', 2, '--group', 16], 'second-level statistics'),
    (['--method', 'rtn', '--minmax', '--group', 16], 'min–max grid'),
    (['--method', 'lowbit', '--base', 'rtn', '--incoherent', '--group', 16], 'incoherence-processed space'),
])
def test_export_refuses_with_reason(tiny, tmp_path, args, why):
    run('quantize', '--model', tiny, *args, '--bits', 3, '--seqlen', 64, '--eval_windows', 0, '--save', tmp_path / 'q', '--quiet')
    r = run('export', tmp_path / 'q', '--out', tmp_path / 'ct', ok=False)
    line = one_error_line(r, 'export', f"--format compressed-tensors: cannot export {tmp_path / 'q'}: ")
    assert why in line and "keep the sensq checkpoint" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ['q']  # nothing written

@pytest.mark.parametrize('args, starts', [
    (['--format', 'gguf', '--out', 'X'], '--format gguf: unknown format'),
    (['--out', 'SRC/sub'], '--out SRC/sub: must be a folder outside'),
    ([], '--out None: name the new folder'),
])
def test_export_bad_arguments(q3, args, starts):
    src = str(q3[0])
    args = [a.replace('SRC', src) for a in args]
    one_error_line(run('export', src, *args, ok=False), 'export', starts.replace('SRC', src))

def test_export_needs_a_sensq_checkpoint(tiny, tmp_path):
    r = run('export', tiny, '--out', tmp_path / 'ct', ok=False)
    assert 'is not a sensq packed checkpoint' in one_error_line(r, 'export', f'{tiny}: ')

# ---------------------------------------------------------------- generate

def test_generate_bad_arguments(tiny, no_load):
    one_error_line(run('generate', '--model', tiny, '--quiet', ok=False), 'generate', '--prompt None: give the text')
    one_error_line(run('generate', '--model', tiny, '--prompt', 'x', '--max_new_tokens', 0, ok=False), 'generate', '--max_new_tokens 0: ')

# ---------------------------------------------------------------- --tasks

def test_eval_tasks_table_and_json(q3, tmp_path):
    r = run('eval', '--model', q3[0], '--seqlen', 64, '--eval_windows', 1, '--tasks', TASK, '--limit', 4, '--prefix_token_id', 0,
            '--out', tmp_path / 'e.json', '--quiet')
    lines = r.stdout.splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith('| task'))
    assert [c.strip() for c in lines[head].strip('|').split('|')] == ['task', 'version', 'shots', 'samples', 'metric', 'value', 'stderr']
    acc = [c.strip() for c in next(l for l in lines if l.startswith('| sensq_mc') and '| acc ' in l).strip('|').split('|')]
    assert acc[3] == '4' and 0 <= float(acc[5]) <= 1 and float(acc[6]) >= 0
    assert any(l.startswith('lm-evaluation-harness ') and 'limit 4' in l for l in lines)
    res = json.loads((tmp_path / 'e.json').read_text())[0]['tasks']
    assert res['lm_eval_version'] and res['tasks']['sensq_mc']['version'] == 1.0 and res['tasks']['sensq_mc']['samples'] == 4
    assert res['tasks']['sensq_mc']['metrics']['acc']['value'] == pytest.approx(float(acc[5]), abs=5e-5)

def test_quantize_tasks_after_quantizing(tiny):
    r = run('quantize', '--model', tiny, '--bits', 4, '--group', 16, '--seqlen', 64, '--eval_windows', 1, '--tasks', TASK,
            '--limit', 2, '--prefix_token_id', 0, '--quiet')
    assert r.stdout.startswith('| method') and '| sensq_mc' in r.stdout

@pytest.mark.parametrize('cmd', ['eval', 'quantize'])
def test_bad_tasks_before_loading(tiny, tmp_path, no_load, cmd):
    r = run(cmd, '--model', tiny, '--tasks', tmp_path / 'nosuch.yaml', '--quiet', ok=False)
    assert 'task YAML not found' in one_error_line(r, cmd, f"--tasks {tmp_path / 'nosuch.yaml'}: ")
    one_error_line(run(cmd, '--model', tiny, '--tasks', TASK, '--limit', 2.5, ok=False), cmd, '--limit 2.5: ')
    one_error_line(run(cmd, '--model', tiny, '--tasks', TASK, '--batch_size', 0, ok=False), cmd, '--batch_size 0: ')

def test_unknown_task_name_one_line(tiny, no_load):
    r = run('eval', '--model', tiny, '--tasks', 'no_such_task_xyz', '--quiet', ok=False)
    one_error_line(r, 'eval', "--tasks no_such_task_xyz: unknown task 'no_such_task_xyz'")

def test_tokenizer_without_bos_eos_needs_prefix(tiny):
    r = run('eval', '--model', tiny, '--seqlen', 64, '--eval_windows', 1, '--tasks', TASK, '--quiet', ok=False)
    assert 'pass --prefix_token_id' in one_error_line(r, 'eval', '--tasks: ')

def test_missing_lm_eval_one_line(tiny, monkeypatch, no_load):
    monkeypatch.setitem(sys.modules, 'lm_eval', None)  # `import lm_eval` now fails as if the extra were not installed
    r = run('eval', '--model', tiny, '--tasks', TASK, '--quiet', ok=False)
    assert "pip install 'sensq[eval]'" in one_error_line(r, 'eval', 'zero-shot tasks need lm-evaluation-harness')
