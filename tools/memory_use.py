"""Measure the peak memory of a CPU training step of train_gpt.py beside the estimate its memory
check makes before a run: use it when a change to the model moves what a step keeps.

    python3 tools/memory_use.py NAME=VALUE ...   # settings as for training (TTT left out)

Each measurement runs in a fresh process (its peak resident memory is the process's): the model,
its optimizers, the weight average and the warm-up's copy are built, then two training steps run on random
tokens. The estimate is train_gpt.memory_estimate's for a training micro-step."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import copy, json, resource, sys
import torch
sys.path.insert(0, sys.argv[1])
import train_gpt as tg

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

hp = tg.Hyperparameters.from_env()
run = tg.Run(0, 1, torch.device("cpu"), None)
tg.check_batch_shape(hp, run)
kernels = tg.select_kernels(hp, run.device)
estimate = tg.memory_estimate(hp, run, kernels)
before = peak()
model = tg.build_model(hp, kernels, run.device)
optimizers = tg.build_optimizers(hp, model, run)
average = tg.WeightAverage(lr_below=1.0, every=1)
average.update(model, 1, 0.0)
warm_up_copy = copy.deepcopy(model.state_dict())
tokens = hp.train_batch_tokens // hp.grad_accum_steps
x = torch.randint(0, hp.vocab_size, (tokens // hp.train_seq_len, hp.train_seq_len))
for _ in range(2):
    model(x, x).backward()
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
print(json.dumps(dict(measured=peak() - before, estimated=estimate["need"])))
"""


def measure(settings: dict) -> tuple[int, int]:
    """(measured, estimated) bytes of a training step at these settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(settings, TTT_ENABLED="0", COMPILE="0")
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT)], env=env, capture_output=True,
                         text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["measured"], result["estimated"]


def main() -> None:
    settings = dict(arg.split("=", 1) for arg in sys.argv[1:])
    measured, estimated = measure(settings)
    print(f"measured {measured / 2**20:,.0f} MiB, estimated {estimated / 2**20:,.0f} MiB "
          f"({estimated / measured:.2f} x)")


if __name__ == "__main__":
    main()
