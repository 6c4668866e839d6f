"""Use to measure a row of the recipe (docs/recipe.md): train_gpt.py with chosen rows switched to their other
choice, and other weight averages scored beside the one it exports (CPU or GPU).

    SWITCH_ROWS=ortho,dt AVERAGES=0,0.1,ema SEED=1337 <settings> python3 tools/recipe_rows.py

SWITCH_ROWS (comma-separated) switches these rows to their other choice for this run only:
  ortho   linear weights that do not start at zero start orthogonal (gain 1, PR #599's) instead of PyTorch's default
  scales  the blocks' mixer and MLP output scales start at 1/sqrt(layer + 1) (PR #599's) instead of 1
  dt      dt_proj's bias keeps PyTorch's default (step sizes near 0.7, PR #599's) instead of Mamba's log-uniform
          step sizes in [0.001, 0.1]
  smear   SmearGate starts at sigmoid(-3), about 5% (PR #599's), instead of sigmoid(-2)
  bigram  the BigramHash table trains in the scalars' Adam group (SCALAR_LR, PR #599's) instead of the embedding's
  fp32    on a GPU, the embedding tables stay fp32 (as before PR #599's dtype row), and with them the residual stream
AVERAGES (comma-separated) are weight averages kept beside the run's own (SWA_LR_BELOW) and scored after training, each
in float (prequant) and through the artifact's int8 grid (roundtrip; the artifact's compression is lossless): a
number is an SWA_LR_BELOW (0: the last step's weights), `ema` the exponential average train_gpt.py exported before
(0.997 a step, applied every 10 steps). Each logs a line `average NAME samples:N prequant_bpb:X roundtrip_bpb:Y`.
Everything else is train_gpt.py as it stands (its settings from the environment, as for training).
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where train_gpt.py is
import train_gpt as tg  # noqa: E402

ROWS = set(filter(None, os.environ.get("SWITCH_ROWS", "").split(",")))
AVERAGES = list(filter(None, os.environ.get("AVERAGES", "").split(",")))
KNOWN_ROWS = {"ortho", "scales", "dt", "smear", "bigram", "fp32"}
build_model, build_optimizers, train_model = tg.build_model, tg.build_optimizers, tg.train_model
ScriptAverage = tg.WeightAverage


def build(hp, kernels, device):
    model = build_model(hp, kernels, device)
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            if "scales" in ROWS:
                block.mixer_scale.fill_((layer + 1) ** -0.5)
                block.mlp_scale.fill_((layer + 1) ** -0.5)
            if "dt" in ROWS:
                bound = block.mixer.dt_rank ** -0.5  # nn.Linear's default bias
                block.mixer.dt_proj.bias.uniform_(-bound, bound)
        if "ortho" in ROWS:
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module.weight.any():
                    torch.nn.init.orthogonal_(module.weight)
        if "smear" in ROWS and model.smear is not None:
            model.smear.gate.fill_(-3.0)
    if "fp32" in ROWS:
        for module in (m for m in model.modules() if isinstance(m, torch.nn.Embedding)):
            module.float()
    return model


def optimizers(hp, model, run):
    opts = build_optimizers(hp, model, run)
    if "bigram" in ROWS and model.bigram is not None:
        groups, table = opts[0].param_groups, model.bigram.table.weight  # Adam's groups: embeddings, scalars[, head]
        groups[0]["params"] = [p for p in groups[0]["params"] if p is not table]
        groups[1]["params"].append(table)
    return opts


class ExponentialAverage:
    """train_gpt.py's export before the warmdown's SWA: decay 0.997 a step, applied every 10 steps."""

    def __init__(self, decay=0.997, every=10):
        self.decay, self.every, self.samples, self.total = decay, every, 0, None

    @torch.no_grad()
    def update(self, model, step, lr_multiplier):
        state = [t.float() for t in model.state_dict().values()]
        if self.total is None:  # the weights after the first step: close to the initial ones
            self.total = [t.clone() for t in state]
        if step % self.every == 0:
            torch._foreach_lerp_(self.total, state, 1 - self.decay ** self.every)
            self.samples += 1

    def weights(self, model):
        return {name: t.to(w.dtype) for (name, w), t in zip(model.state_dict().items(), self.total)}


OTHERS = {}  # name: the averages beside the script's own, updated with it


class Averages(ScriptAverage):
    """The script's own weight average, updating the others with it."""

    def __init__(self, lr_below, every):
        super().__init__(lr_below, every)
        OTHERS.clear()
        for name in AVERAGES:
            OTHERS[name] = ExponentialAverage() if name == "ema" else ScriptAverage(float(name), every)

    def update(self, model, step, lr_multiplier):
        super().update(model, step, lr_multiplier)
        for other in OTHERS.values():
            other.update(model, step, lr_multiplier)


def train_and_score_averages(hp, run, model, compiled, data, results):
    train_model(hp, run, model, compiled, data, results)
    for name, average in OTHERS.items():
        weights = average.weights(model)
        model.load_state_dict(weights)
        _, prequant = tg.evaluate_bpb(compiled, data, hp, run)
        model.load_state_dict(tg.dequantize_state_dict(tg.quantize_state_dict(weights, hp.quant_bits)))
        _, roundtrip = tg.evaluate_bpb(compiled, data, hp, run)
        run.log(f"average {name} samples:{average.samples} prequant_bpb:{prequant:.5f} roundtrip_bpb:{roundtrip:.5f}")


if __name__ == "__main__":
    unknown = ROWS - KNOWN_ROWS
    bad = [a for a in AVERAGES if a != "ema" and not (a.replace(".", "", 1).isdigit() and 0 <= float(a) <= 1)]
    if unknown or bad:
        sys.exit(f"error: SWITCH_ROWS has unknown rows {sorted(unknown)} (known: {sorted(KNOWN_ROWS)}); "
                 f"AVERAGES has bad entries {bad} (numbers in 0..1, or ema)")
    tg.build_model, tg.build_optimizers = build, optimizers
    tg.WeightAverage, tg.train_model = Averages, train_and_score_averages
    sys.exit(tg.main())
