"""Run several configurations of train_gpt.py side by side (on one GPU or several, or the CPU) and
tabulate their scores: use it to decide a recipe choice by measurement, with seeds.

    python3 tools/side_by_side.py PLAN.json OUT [--at-once 4] [--gpus 0,1]   # run, then tabulate
    python3 tools/side_by_side.py --table OUT           # tabulate again, every plan run in OUT

PLAN is a JSON object: "common", settings every run takes, and "runs", a list of objects with
"name" (a RUN_ID), "env" (its own settings), optionally "script" (another entry point such as
tools/recipe_rows.py, whose own variables go in "env" too) with "args" (its command-line arguments,
as tools/ttt_sweep.py takes), and "after" (names of runs to wait
for: an eval-only run that scores another's artifact names it, with ARTIFACT=../NAME/... in its
env). Each run works in OUT/NAME/ (its log in OUT/NAME/logs/NAME.txt, its console in
OUT/NAME/console.txt); a run whose results exist already is not run again. --at-once runs that
many per GPU together: runs side by side are comparable with each other at equal steps, not in
speed. The table (OUT/table.md, also printed) has every run's final scores and their mean by the
run's "group" (a plan's runs with the same group are the seeds of one choice). Plans run in one
OUT share it: a plan's run can wait for another plan's."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCORES = {  # column: (log line, field), in the order a run logs them
    "prequant": ("final_prequant", "val_bpb"),
    "last step": ("final_last_step_prequant", "val_bpb"),
    "roundtrip": ("final_int8_zstd_roundtrip_exact", "val_bpb"),
    "ttt": ("legal_ttt_exact", "val_bpb"),
}


def final_scores(log: Path) -> dict:
    """The last value of each score in a run's log (after its embedded source), and its steps."""
    scores = {}
    if not log.is_file():
        return scores
    text = log.read_text(encoding="utf-8", errors="replace").split("=" * 100 + "\n", 1)[-1]
    for line in text.splitlines():
        words = line.split()
        for column, (prefix, field) in SCORES.items():
            if words and words[0] == prefix:
                scores[column] = float(dict(w.split(":", 1) for w in words[1:] if ":" in w)[field])
        if words and words[0] == "training" and line.startswith("training done:"):
            scores["steps"] = int(line.split("step:")[1].split()[0])
        if words and words[0] in ("error:", "stopped:"):
            scores["stopped"] = line[:80]
    return scores


def table(out: Path, plan: dict) -> str:
    rows = []
    groups = {}
    for spec in plan["runs"]:
        scores = final_scores(out / spec["name"] / "logs" / f"{spec['name']}.txt")
        cells = [f"{scores[c]:.5f}" if c in scores else "" for c in SCORES]
        rows.append(f"| {spec['name']} | {scores.get('steps', '')} | " + " | ".join(cells)
                    + f" | {scores.get('stopped', '')} |")
        groups.setdefault(spec.get("group", spec["name"]), []).append(scores)
    lines = ["| run | steps | " + " | ".join(SCORES) + " | stopped |",
             "|---|---|" + "---|" * len(SCORES) + "---|", *rows, "",
             "| group | runs | " + " | ".join(f"mean {c}" for c in SCORES) + " |",
             "|---|---|" + "---|" * len(SCORES)]
    for group, members in groups.items():
        means = []
        for column in SCORES:
            values = [m[column] for m in members if column in m]
            means.append(f"{statistics.mean(values):.5f}" if len(values) == len(members) else "")
        lines.append(f"| {group} | {len(members)} | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def start(spec: dict, plan: dict, out: Path, gpu: str | None) -> subprocess.Popen:
    folder = out / spec["name"]
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({k: str(v) for k, v in {**plan.get("common", {}), **spec.get("env", {})}.items()})
    env.update(RUN_ID=spec["name"], OVERWRITE="1", PYTHONUNBUFFERED="1")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    script = ROOT / spec.get("script", "train_gpt.py")
    console = open(folder / "console.txt", "w", encoding="utf-8")
    return subprocess.Popen([sys.executable, str(script), *spec.get("args", [])], cwd=folder, env=env, stdout=console,
                            stderr=subprocess.STDOUT)


def finished(out: Path, name: str) -> bool:
    return (out / name / "logs" / f"{name}.json").is_file()


def run_plan(plan: dict, out: Path, at_once: int, gpus: list) -> None:
    names = {spec["name"] for spec in plan["runs"]}
    for spec in plan["runs"]:
        missing = [n for n in spec.get("after", []) if n not in names and not finished(out, n)]
        if missing:
            sys.exit(f"error: {spec['name']} waits for {', '.join(missing)}, which this plan does "
                     f"not run and {out} does not hold")
    waiting = [spec for spec in plan["runs"] if not finished(out, spec["name"])]
    running = {}  # name: (process, gpu)
    ended = set()
    while waiting or running:
        for name, (proc, _) in list(running.items()):
            if proc.poll() is not None:
                print(f"{time.strftime('%H:%M:%S')} {name} ended ({proc.returncode})", flush=True)
                ended.add(name)
                del running[name]
        for spec in list(waiting):
            busy = [gpu for _, gpu in running.values()]
            free = [gpu for gpu in gpus if busy.count(gpu) < at_once]
            ready = all(n in ended or finished(out, n) for n in spec.get("after", []))
            if free and ready:
                running[spec["name"]] = (start(spec, plan, out, free[0]), free[0])
                waiting.remove(spec)
                print(f"{time.strftime('%H:%M:%S')} {spec['name']} started on GPU {free[0]}",
                      flush=True)
        time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan", nargs="?", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--at-once", type=int, default=1, help="runs per GPU at a time (default 1)")
    parser.add_argument("--gpus", default="0", help="GPU indices, comma-separated (CPU: any)")
    parser.add_argument("--table", action="store_true", help="only tabulate the runs in OUT")
    args = parser.parse_args()
    if not args.table:
        if args.plan is None:
            parser.error("give a PLAN, or --table")
        plan = json.loads(args.plan.read_text())
        names = [spec["name"] for spec in plan["runs"]]
        if len(set(names)) != len(names):
            parser.error("the plan's run names must differ")
        (args.out / "plans").mkdir(parents=True, exist_ok=True)
        (args.out / "plans" / args.plan.name).write_text(json.dumps(plan, indent=1))
        run_plan(plan, args.out, args.at_once, args.gpus.split(","))
    plans = sorted((args.out / "plans").glob("*.json"))
    text = "\n".join(f"{path.stem}:\n\n" + table(args.out, json.loads(path.read_text()))
                     for path in plans)
    (args.out / "table.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
