"""Every method returns its packed result: with `pack=True` the stats carry a `sensq.pack.PackedWeight` per layer whose
`dequantize()` is, bit for bit, the (fp32) weight the method wrote into the model, and `bits_per_weight` is the bytes of
those packed layers over the weights; and that result round-trips through a checkpoint (`write_packed_checkpoint`,
then `AutoModelForCausalLM.from_pretrained` after `import sensq`): tensors bit-exact, logits those of the simulated
model. Tiny two-block Llama, bits 2, 3 and 4."""
import copy
import pytest
import torch
from sensq.quant import QuantSpec
from sensq.models import tiny_llama, linear_layers
from sensq.pack import PackedWeight, paper_bits_per_weight
from sensq.eval import rtn_quantize_model
from sensq.gptq import gptq_quantize_model
from sensq.spqr import spqr_quantize_model
from sensq.oac import oac_quantize_model
from sensq.squeezellm import squeezellm_quantize_model
from sensq.gwq import gwq_quantize_model
from sensq.requant import requant_quantize_model
from sensq.quantlinear import pack_model, quant_layers, write_packed_checkpoint
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
CALIB = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0))
RQ = dict(outliers=0.004, significant=0.002, steps=1, pqi_N=2, pqi_windows=1, grid=(0, .0025, .005), progress=False, pack=True)

METHODS = {  # name -> (function of (model, bits), the packed grid, sparse part expected)
    'rtn': (lambda m, b: rtn_quantize_model(m, None, QuantSpec(b, 32), pack=True), 'asym', False),
    'rtn-minmax': (lambda m, b: rtn_quantize_model(m, None, QuantSpec(b, 24, int_zero=False), pack=True), 'minmax', False),
    'rtn-sym': (lambda m, b: rtn_quantize_model(m, None, QuantSpec(b, None, sym=True), pack=True), 'sym', False),
    'gptq-act-order': (lambda m, b: gptq_quantize_model(m, CALIB, QuantSpec(b, 32), progress=False, act_order=True, pack=True), 'asym', False),
    'spqr': (lambda m, b: spqr_quantize_model(m, CALIB, QuantSpec(b, 16, int_zero=False), progress=False, pack=True), 'minmax', True),
    'spqr-int-zero': (lambda m, b: spqr_quantize_model(m, CALIB, QuantSpec(b, 16), progress=False, pack=True), 'asym', True),
    'oac': (lambda m, b: oac_quantize_model(m, CALIB, QuantSpec(b, 16, int_zero=False), progress=False, pack=True), 'minmax', True),
    'squeezellm': (lambda m, b: squeezellm_quantize_model(m, CALIB, QuantSpec(b, None), progress=False, outliers=0.0045,
                                                          sensitive=0.0005, pack=True), 'codebook', True),
    'gwq-gptq': (lambda m, b: gwq_quantize_model(m, CALIB, QuantSpec(b, 32), progress=False, base='gptq', pack=True), 'asym', True),
    'gwq-rtn-minmax': (lambda m, b: gwq_quantize_model(m, CALIB, QuantSpec(b, 32, int_zero=False), progress=False, base='rtn', pack=True), 'minmax', True),
    'requant-gptq': (lambda m, b: requant_quantize_model(m, CALIB, QuantSpec(b, 32), base='gptq', **RQ), 'asym', True),
    'requant-squeezellm': (lambda m, b: requant_quantize_model(m, CALIB, QuantSpec(b, None), base='squeezellm', **RQ), 'codebook', True),
}


@pytest.mark.parametrize('bits', [2, 3, 4])
@pytest.mark.parametrize('method', list(METHODS))
def test_simulated_weight_is_the_packed_weight(method, bits, tmp_path):
    fn, grid, sparse = METHODS[method]
    model = tiny_llama(n_layers=2, seed=0)
    st = fn(model, bits)
    lins = linear_layers(model)
    assert set(st['packed']) == set(lins)
    n, nbytes, paper = 0, 0, 0.
    for k, lin in lins.items():
        pw = st['packed'][k]
        assert isinstance(pw, PackedWeight) and pw.config['bits'] == bits and pw.config['grid'] == grid
        assert pw.shape == tuple(lin.weight.shape)
        assert torch.equal(lin.weight.detach(), pw.dequantize())            # what the method measured is what is stored
        n += lin.weight.numel(); nbytes += pw.nbytes(); paper += paper_bits_per_weight(pw) * lin.weight.numel()
    if method == 'spqr-int-zero' and bits == 4:   # 3-bit second-level zeros below 4-bit codes: zeros are second-level quantized
        assert all('zeros_qq' in p.tensors and p.config['qq_zero_bits'] == 3 for p in st['packed'].values())
    if method.startswith('spqr') or method == 'oac':
        assert all('scales_qq' in p.tensors for p in st['packed'].values())
    if method == 'gptq-act-order': assert all('g_idx' in p.tensors for p in st['packed'].values())
    assert (sum(p.nnz for p in st['packed'].values()) > 0) == sparse
    assert st['bits_per_weight'] == pytest.approx(8 * nbytes / n, rel=1e-12)
    if sparse: assert st['paper_bits_per_weight'] == pytest.approx(paper / n, rel=1e-12)
    # the checkpoint round trip: packed tensors bit-exact after save and load, logits equal to the simulated model's
    # (the same fp32 weights through the same F.linear; allowed: fp32 rounding, 1e-5 of the largest logit)
    d = write_packed_checkpoint(pack_model(copy.deepcopy(model), st['packed']), None, tmp_path / 'ckpt',
                                dict(method=method, bits=bits), dense_dtype=None)
    loaded = AutoModelForCausalLM.from_pretrained(d)
    ql = quant_layers(loaded)
    assert set(ql) == set(lins)
    for k, pw in st['packed'].items():
        for name, t in pw.tensors.items():
            got = getattr(ql[k], name)
            assert got.dtype == t.dtype and torch.equal(got, t), (k, name)
    with torch.no_grad(): a, b = loaded(CALIB).logits, model(CALIB).logits
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()
