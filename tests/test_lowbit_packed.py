"""A packed incoherent low-bit model end to end (issue 13): quantized by `sensq.lowbit` (GPTQ in the Hadamard-transformed
space, with ReQuant's Algorithm 2 sparse part), packed, saved, loaded with `from_pretrained` in a fresh process and
evaluated; its logits and perplexity must be those of the simulated model the method measured."""
import json, subprocess, sys
import pytest
import torch
from safetensors import safe_open
from test_cli import ENV, run
from test_cli_packed import FRESH, IDS, quantized_layers
from sensq.cli import _tiny_fixture_dir
from transformers import AutoTokenizer
from sensq.data import get_calibration
from sensq.eval import EvalProtocol, evaluate_protocol
from sensq.lowbit import lowbit_quantize_model
from sensq.models import load_model
from sensq.quant import QuantSpec
from sensq.quantlinear import pack_model, write_packed_checkpoint

PROTOCOL = EvalProtocol('default', seqlen=64, windows=2)

@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    "(folder, simulated model, the method's stats): incoherent GPTQ w2g16 + Algorithm 2 on the tiny model, saved packed."
    d = tmp_path_factory.mktemp('lowbit')
    tiny = _tiny_fixture_dir(d / 'tiny')
    sim, tok = load_model(str(tiny), progress=False)
    calib = get_calibration(tok, 'default', n=4, seqlen=64, seed=0)
    st = lowbit_quantize_model(sim, calib, QuantSpec(2, 16), 'gptq', incoherent=True, requant='alg2', significant=0.01,
                               pqi_N=2, pqi_windows=2, steps=1, progress=False, pack=True)
    m, _ = load_model(str(tiny), progress=False)
    pack_model(m, st['packed'])
    write_packed_checkpoint(m, tok, d / 'q', dict(method='gptq', incoherent=True, requant='alg2', spec='w2g16a'), dense_dtype=None)
    return d / 'q', sim, st

def test_packed_layers_carry_transforms_and_sparse_part(saved):
    folder, _, st = saved
    layers = quantized_layers(folder)
    assert len(layers) == 14 and layers.keys() == st['packed'].keys()
    for name, e in layers.items():
        assert e['config']['bits'] == 2 and e['config'].get('transform'), name        # the Hadamard seeds are in the format
        assert 'sparse_val' in e['tensors'], name                                    # Algorithm 2's detached weights
    # all bits counted by hand: every tensor of a quantized layer in the file, plus its two 64-bit transform seeds
    with safe_open(str(folder / 'model.safetensors'), 'pt') as f:
        nbytes = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys() if k.rsplit('.', 1)[0] in layers)
    nbytes += sum(8 * len(e['config']['transform']['seeds']) for e in layers.values())
    weights = sum(e['config']['in_features'] * e['config']['out_features'] for e in layers.values())
    assert all(len(e['config']['transform']['seeds']) == 2 for e in layers.values())
    assert st['bits_per_weight'] == pytest.approx(8 * nbytes / weights, rel=1e-12)           # what the method reported
    meta = json.loads((folder / 'sensq_quant.json').read_text())
    assert meta['stored']['bits_per_weight'] == pytest.approx(8 * nbytes / weights, rel=1e-12)  # what the checkpoint records

def test_from_pretrained_equals_simulated(saved, tmp_path):
    "A fresh process loads the folder with transformers (`import sensq`) and computes the simulated model's logits."
    folder, sim, _ = saved
    r = subprocess.run([sys.executable, '-c', FRESH, str(folder), json.dumps(IDS), str(tmp_path / 'o.pt')],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    got = torch.load(tmp_path / 'o.pt')
    assert set(k for k, v in got['kinds'].items() if v == 'QuantLinear') == set(quantized_layers(folder))
    with torch.no_grad(): ref = sim(torch.tensor(IDS)).logits
    # the packed layers apply the two transforms online (fp32, O(log n) butterfly stages) instead of using W-hat:
    # the same weights up to float32 rounding of transforms of width <= 256, far below 1e-4 of the logits' scale
    assert (got['logits'] - ref).abs().max() <= 1e-4 * ref.abs().max()

def test_packed_model_evaluates_like_simulated(saved, tmp_path):
    "`sensq eval --model DIR` on the packed checkpoint gives the simulated model's perplexity."
    folder, sim, _ = saved
    tok = AutoTokenizer.from_pretrained(folder)
    want = evaluate_protocol(sim, tok, PROTOCOL, progress=False)['ppl']
    run('eval', '--model', folder, '--seqlen', PROTOCOL.seqlen, '--eval_windows', PROTOCOL.windows, '--out', tmp_path / 'e.json', '--quiet')
    got = json.loads((tmp_path / 'e.json').read_text())[0]['ppl']
    assert got == pytest.approx(want, rel=1e-4)
