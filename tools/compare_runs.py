"""Use to check that two runs train the same model (e.g. 1 GPU against 2): their logged losses side by side.

    python3 tools/compare_runs.py REFERENCE.txt OTHER.txt [MORE.txt ...]

Prints, for each logged step, every run's train_loss and each other run's difference from the first;
then the largest difference over all steps, the final scores, and the ranks_agree lines. For the
multi-GPU equality check (docs/performance.md): the first log is one GPU with two micro-steps, a second is the
same run repeated (its differences are the run-to-run noise of non-deterministic kernels), a third is
two GPUs with one micro-step each.
"""
import re
import sys
from pathlib import Path

STEP = re.compile(r"^step:(\d+)/\d+ train_loss:([0-9.naif]+)")
SCORES = ("final_prequant", "final_int8_zstd_roundtrip_exact", "legal_ttt_exact")


def read(path: str) -> tuple[dict[int, float], list[str]]:
    losses, notes = {}, []
    text = Path(path).read_text(encoding="utf-8")
    text = text.split("=" * 100 + "\n", 1)[-1]  # a log begins with the script's source
    for line in text.splitlines():
        if m := STEP.match(line):
            losses[int(m[1])] = float(m[2])
        elif line.startswith(SCORES + ("ranks_agree", "world_size:", "training done")):
            notes.append(line)
    return losses, notes


def main(paths: list[str]) -> int:
    if len(paths) < 2:
        print(__doc__)
        return 2
    runs = [read(p) for p in paths]
    steps = sorted(set.intersection(*(set(losses) for losses, _ in runs)))
    if not steps:
        print("no logged step is common to all runs")
        return 1
    names = [Path(p).stem for p in paths]
    print("| step | " + " | ".join(names) + " | " + " | ".join(f"{n} - {names[0]}" for n in names[1:]) + " |")
    print("|---" * (2 * len(names)) + "|")
    worst = [0.0] * (len(runs) - 1)
    for step in steps:
        values = [losses[step] for losses, _ in runs]
        diffs = [v - values[0] for v in values[1:]]
        worst = [max(w, abs(d)) for w, d in zip(worst, diffs)]
        print(f"| {step} | " + " | ".join(f"{v:.4f}" for v in values) + " | " + " | ".join(f"{d:+.4f}" for d in diffs) + " |")
    print()
    for name, w in zip(names[1:], worst):
        print(f"largest |{name} - {names[0]}| over {len(steps)} logged steps: {w:.4f}")
    for name, (_, notes) in zip(names, runs):
        print(f"\n{name}:")
        for note in notes:
            print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
