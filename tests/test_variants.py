"""Candidate versions of train_gpt.py that the session driver benchmarks (measurements/variants/): each still applies to
the script as it stands, and computes the same model."""
import importlib.util
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, randomized_model, tiny_hp

VARIANTS = sorted((ROOT / "measurements" / "variants").glob("*.py"))


def load_variant(make, tmp_path):
    script = tmp_path / "train_gpt.py"
    script.write_text(subprocess.run([sys.executable, str(make), str(ROOT / "train_gpt.py")], capture_output=True,
                                     text=True, check=True).stdout)
    spec = importlib.util.spec_from_file_location(f"variant_{make.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("make", VARIANTS, ids=[v.stem for v in VARIANTS])
def test_a_variant_computes_the_same_model(make, tmp_path):
    hp, variant = tiny_hp(), load_variant(make, tmp_path)
    models = [randomized_model(), variant.HymbaGPT(hp, variant.select_kernels(hp, torch.device("cpu"))).double()]
    models[1].load_state_dict(models[0].state_dict())
    ids, targets = torch.randint(0, hp.vocab_size, (2, 64)), torch.randint(0, hp.vocab_size, (2, 64))
    losses = [model(ids, targets) for model in models]
    for loss in losses:
        loss.backward()
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-12)
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12), name
