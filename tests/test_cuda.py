"""The `#| cuda` cells of every notebook, as plain pytest tests (no nbdev, execnb or Jupyter needed).

Skipped without a GPU. `SENSQ_TEST_DEVICE=cpu` runs them on the CPU anyway (code paths only: the CPU is then both
sides of every comparison). `bench/gpu_suite.sh` runs this file on the GPU machine; see tools/run_cuda_cells.py.
"""
import os, sys
from pathlib import Path
import pytest, torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
from run_cuda_cells import notebooks_with_cuda, run_notebook, dry_runnable

DEV = os.environ.get('SENSQ_TEST_DEVICE', 'cuda')
on_cpu = torch.device(DEV).type == 'cpu'
NBS = notebooks_with_cuda(ROOT)

@pytest.mark.skipif(not on_cpu and not torch.cuda.is_available(), reason='no CUDA device (set SENSQ_TEST_DEVICE=cpu for a dry run)')
@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_cuda_cells(nb):
    if on_cpu and not dry_runnable(nb): pytest.skip(f'{nb.name}: cuda cells name the GPU themselves')
    r = run_notebook(nb)
    assert r['error'] is None, f"{nb.name}:\n{r['error']}"

def test_every_method_notebook_has_cuda_cells():
    "Issue 14 §1: each metric and method notebook carries a GPU check."
    want = {'10_taylor', '11_hessian', '12_pqi', '14_sensitivity', '15_distributed', '20_gptq', '21_spqr', '22_oac',
            '31_squeezellm', '32_gwq', '33_requant'}
    assert want <= {p.stem for p in NBS}, sorted(want - {p.stem for p in NBS})
