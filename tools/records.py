#!/usr/bin/env python3
"""Check, compare and package Parameter Golf runs.

Commands: `table` prints each seed's results with their mean and sample standard deviation
and, given the val_loss of the record to beat, a one-sided t-test; `submission` writes the
combined submission.json; `folder` assembles a challenge record folder; `plot` draws the loss
curves; `settings` prints a run's settings as shell exports. It runs from any folder, and
`python3 tools/records.py COMMAND -h` lists a command's options.

A RUN is a training log (*.txt, *.log), a per-run submission.json, or a folder holding them.
Bad input gives one line `error: <what>` on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import math
import re
import shlex
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

SIZE_LIMIT = 16_000_000  # challenge cap on script bytes + compressed model bytes
SEED_KEYS = ("seed", "val_loss", "val_bpb", "bytes_total", "steps", "train_time_s", "eval_time_s")
WHOLE_KEYS = ("seed", "bytes_total", "bytes_code", "bytes_model", "steps")  # counts, not measures


class RecordsError(Exception):
    """A problem with the input; main() prints it as one line and exits 2."""


class EvalOnlyLog(RecordsError):
    """The log of an EVAL_ONLY=1 run: it re-scored an artifact and trained nothing."""


@dataclass
class Run:
    source: Path
    seed: int
    val_loss: float
    val_bpb: float
    bytes_total: int | None = None
    bytes_code: int | None = None
    bytes_model: int | None = None
    steps: int | None = None
    train_time_s: float | None = None
    eval_time_s: float | None = None
    final: str = "json"  # which result the numbers come from: ttt, roundtrip or json
    train_curve: list = field(default_factory=list)  # (step, seconds, train_loss)
    val_curve: list = field(default_factory=list)  # (step, seconds, val_bpb)


# --- Log parsing -------------------------------------------------------------
# A log begins with the training script's own source code, so a line counts
# only when the WHOLE line, from column 0, matches one of these patterns.
# Source lines that merely mention "val_loss" (f-strings, comments) never do.

def _num(name: str) -> str:
    return rf"(?P<{name}>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf))"


def _int(name: str) -> str:
    return rf"(?P<{name}>\d+)"


LINE_PATTERNS = {
    "seed": rf"seed:{_int('seed')}",
    "val": rf"step:{_int('step')}/\d+ val_loss:{_num('loss')} val_bpb:{_num('bpb')} "
           rf"train_time:{_int('ms')}ms step_avg:{_num('avg')}ms",
    "train": rf"step:{_int('step')}/\d+ train_loss:{_num('loss')} "
             rf"train_time:{_int('ms')}ms step_avg:{_num('avg')}ms",
    "stop": rf"stopping_early: \S+ train_time:{_int('ms')}ms step:{_int('step')}/\d+",
    "artifact": rf"artifact bytes_code:{_int('code')} bytes_model:{_int('model')} "
                rf"bytes_total:{_int('total')}",
    "roundtrip": rf"final_int8_zstd_roundtrip_exact val_loss:{_num('loss')} "
                 rf"val_bpb:{_num('bpb')} eval_time:{_int('eval_ms')}ms",
    "ttt": rf"legal_ttt_exact val_loss:{_num('loss')} val_bpb:{_num('bpb')} "
           rf"eval_time:{_int('eval_ms')}ms",
    "ttt_start": rf"ttt: {_int('chunks')} chunks of {_int('chunk_tokens')} tokens, "
                 r"score first, then adapt",
    "eval_only": r"eval_only: scoring (?P<artifact>.+)",
}
LINE_PATTERNS = {kind: re.compile(p) for kind, p in LINE_PATTERNS.items()}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise RecordsError(f"{path}: cannot read ({e.strerror or e})") from None


def parse_log(path: Path) -> Run:
    last: dict[str, dict] = {}  # last match of each kind
    steps = train_ms = None
    train_curve, val_curve = [], []
    for line in _read_text(path).splitlines():
        line = line.rstrip()
        for kind, pattern in LINE_PATTERNS.items():
            m = pattern.fullmatch(line)
            if not m:
                continue
            g = m.groupdict()
            last[kind] = g
            if kind in ("val", "train", "stop"):
                steps, train_ms = int(g["step"]), int(g["ms"])
            if kind == "train":
                train_curve.append((steps, train_ms / 1000, float(g["loss"])))
            elif kind == "val":
                val_curve.append((steps, train_ms / 1000, float(g["bpb"])))
            break

    if "eval_only" in last:  # no training, so no seed table row: load_runs leaves it out
        rescored = last["eval_only"]["artifact"]
        raise EvalOnlyLog(f"{path}: an eval-only run (it re-scored {rescored}), "
                          "not a training run; left out")
    missing = [what for absent, what in [
        ("ttt" not in last and "roundtrip" not in last, "truncated: no final "
         "'legal_ttt_exact' or 'final_int8_zstd_roundtrip_exact' result line"),
        ("ttt_start" in last and "ttt" not in last, "truncated during TTT: its 'ttt:' start line "
         "has no 'legal_ttt_exact' result after it"),
        ("seed" not in last, "no 'seed:N' line"),
        (steps is None, "no 'step:N/M ...' progress line"),
        ("artifact" not in last, "no 'artifact bytes_code:... bytes_total:...' line")] if absent]
    if missing:
        raise RecordsError(f"{path}: " + "; ".join(missing))

    final = "ttt" if "ttt" in last else "roundtrip"
    eval_ms = sum(int(last[k]["eval_ms"]) for k in ("roundtrip", "ttt") if k in last)
    art = last["artifact"]
    return Run(source=path, seed=int(last["seed"]["seed"]),
               val_loss=float(last[final]["loss"]), val_bpb=float(last[final]["bpb"]),
               bytes_total=int(art["total"]), bytes_code=int(art["code"]),
               bytes_model=int(art["model"]), steps=steps, train_time_s=train_ms / 1000,
               eval_time_s=eval_ms / 1000, final=final, train_curve=train_curve,
               val_curve=val_curve)


def parse_run_json(path: Path) -> Run:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise RecordsError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict):
        raise RecordsError(f"{path}: expected a JSON object")
    if "seed" not in data and "seeds" in data:
        raise RecordsError(f"{path}: this is a combined submission.json; "
                           "pass the per-run logs or per-run submission.json files")
    missing = [k for k in ("val_loss", "val_bpb", "seed") if k not in data]
    if missing:
        raise RecordsError(f"{path}: missing key(s) {', '.join(missing)}")
    fields = {k: data.get(k) for k in SEED_KEYS + ("bytes_code", "bytes_model")}
    for key, value in fields.items():
        if value is None:
            continue
        # NaN, Infinity, a negative count or time: the table and the submission would carry it
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value < 0):
            raise RecordsError(f"{path}: key {key} is not a finite number >= 0 ({value!r})")
        if key in WHOLE_KEYS:
            if value != int(value):
                raise RecordsError(f"{path}: key {key} is not a whole number ({value!r})")
            fields[key] = int(value)
    return Run(source=path, **fields)


def load_runs(paths: list[str]) -> list[Run]:
    """Parse every RUN argument. In a directory, logs win over submission.json
    (they carry the curves); requirements*.txt is not a log."""
    files: list[Path] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            logs = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".txt", ".log")
                          and not f.name.startswith("requirements"))
            if logs:
                files += logs
            elif (p / "submission.json").is_file():
                files.append(p / "submission.json")
            else:
                raise RecordsError(f"{p}: no training log (*.txt, *.log) or submission.json")
        elif p.is_file():
            files.append(p)
        else:
            raise RecordsError(f"{p}: no such file or directory")
    runs = []
    for f in files:
        try:
            runs.append(parse_run_json(f) if f.suffix == ".json" else parse_log(f))
        except EvalOnlyLog as e:  # e.g. a reviewer's re-score in the same logs/ folder
            print(f"warning: {e}", file=sys.stderr)
    if not runs:
        raise RecordsError(f"{', '.join(paths)}: no training run among the given logs")
    for run in runs:  # a diverged run (nan) would silently poison the mean and the test
        if not (math.isfinite(run.val_loss) and math.isfinite(run.val_bpb)):
            raise RecordsError(f"{run.source}: final val_loss/val_bpb is not finite")
        if run.val_loss < 0 or run.val_bpb < 0:  # a cross-entropy is never negative
            raise RecordsError(f"{run.source}: final val_loss/val_bpb is negative")
    # A repeated seed would inflate n and fake significance, so refuse it.
    by_seed: dict[int, Run] = {}
    for run in runs:
        if run.seed in by_seed:
            raise RecordsError(f"{run.source}: seed {run.seed} already given by "
                               f"{by_seed[run.seed].source}")
        by_seed[run.seed] = run
    return runs


# --- Statistics --------------------------------------------------------------

def check_test_options(previous, margin: float, alpha: float) -> None:
    """The t-test's inputs from the command line must mean something."""
    if previous is not None and not (math.isfinite(previous) and previous > 0):
        raise RecordsError(f"--previous-val-loss {previous}: expected a finite val_loss > 0")
    if not (math.isfinite(margin) and margin >= 0):
        raise RecordsError(f"--margin {margin}: expected a finite number of nats >= 0")
    if not 0 < alpha < 1:
        raise RecordsError(f"--alpha {alpha}: expected a significance level between 0 and 1, "
                           "both excluded")


def untestable(losses: list[float]) -> str | None:
    """Why the t-test is undefined for these losses, or None when it is defined."""
    if len(losses) < 2:
        return f"the t-test needs >= 2 seeds (have {len(losses)})"
    if statistics.stdev(losses) == 0.0:
        return (f"the {len(losses)} seeds have the same val_loss, so the sample standard "
                "deviation is 0 and t is undefined")
    return None


def one_sided_test(losses: list[float], previous: float, margin: float):
    """t-test of H1: mean(losses) < previous - margin. Returns (t, df, p).

    t is positive when the mean beats the target (previous - margin). Fewer than two
    losses, or identical ones, raise ValueError (see untestable)."""
    reason = untestable(losses)
    if reason:
        raise ValueError(reason)
    n = len(losses)
    target = previous - margin
    try:  # imported here so that the other subcommands work without it
        from scipy import stats
    except ImportError:
        raise RecordsError("the t-test needs scipy (pip install scipy)") from None
    result = stats.ttest_1samp(losses, popmean=target, alternative="less")
    # scipy's statistic is (mean - target) / se; report it with our sign (positive = better)
    return -float(result.statistic), n - 1, float(result.pvalue)


# --- Subcommands -------------------------------------------------------------

def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _warn_size(runs: list[Run]) -> None:
    for run in runs:
        if run.bytes_total is not None and run.bytes_total > SIZE_LIMIT:
            print(f"warning: {run.source}: bytes_total {run.bytes_total} exceeds "
                  f"{SIZE_LIMIT}", file=sys.stderr)


def table_text(runs: list[Run], previous=None, margin=0.005, alpha=0.01) -> str:
    row = "{:>8} {:>11} {:>11} {:>11} {:>6} {:>8} {:>7}  {:<9} {}"
    out = [row.format("seed", "val_loss", "val_bpb", "bytes_total", "steps",
                      "train_s", "eval_s", "final", "source")]
    for r in runs:
        out.append(row.format(r.seed, f"{r.val_loss:.8f}", f"{r.val_bpb:.8f}",
                              _fmt(r.bytes_total, "d"), _fmt(r.steps, "d"),
                              _fmt(r.train_time_s, ".1f"), _fmt(r.eval_time_s, ".1f"),
                              r.final, r.source))
    losses, bpbs = [r.val_loss for r in runs], [r.val_bpb for r in runs]
    sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else None)
    out.append(row.format("mean", f"{statistics.fmean(losses):.8f}",
                          f"{statistics.fmean(bpbs):.8f}", "", "", "", "", "", ""))
    out.append(row.format("std", _fmt(sd(losses), ".8f"), _fmt(sd(bpbs), ".8f"),
                          "", "", "", "", "", "(sample, n-1)"))
    if len({r.final for r in runs}) > 1:
        out.append("note: runs mix result kinds (ttt / roundtrip / json); check each is final")
    if previous is None:
        return "\n".join(out)
    reason = untestable(losses)
    if reason:
        out.append(f"\nno t-test made: {reason}")
        return "\n".join(out)
    target = previous - margin
    out.append(f"\none-sided t-test  H1: mean val_loss < {previous} - {margin} = {target:.8f}")
    t, df, p = one_sided_test(losses, previous, margin)
    out.append(f"t = {t:.4f}  df = {df}  p = {p:.6g}")
    if p < alpha:
        out.append(f"verdict: SIGNIFICANT at alpha = {alpha} (p < {alpha}): "
                   f"beats {previous} by more than {margin} nats")
    else:
        out.append(f"verdict: NOT significant at alpha = {alpha} (p >= {alpha})")
    return "\n".join(out)


def combined_submission(runs: list[Run], args, bytes_code=None) -> dict:
    lacking = [str(r.source) for r in runs if r.bytes_total is None]
    if lacking:
        raise RecordsError(f"{lacking[0]}: no bytes_total, needed for a submission")
    if bytes_code is None:
        codes = [r.bytes_code for r in runs if r.bytes_code is not None]
        bytes_code = max(codes) if codes else None
    return {
        "name": args.name, "author": args.author, "github_id": args.github_id,
        "val_bpb": round(statistics.fmean(r.val_bpb for r in runs), 8),
        "val_loss": round(statistics.fmean(r.val_loss for r in runs), 8),
        "bytes_total": max(r.bytes_total for r in runs),
        "bytes_code": bytes_code, "blurb": args.blurb,
        "date": args.date or datetime.date.today().isoformat(),
        "seeds": [{k: getattr(r, k) for k in SEED_KEYS} for r in runs],
    }


def check_date(date: str) -> None:
    """--date must be a real calendar day written YYYY-MM-DD."""
    try:
        valid = (bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", date))
                 and bool(datetime.date.fromisoformat(date)))
    except ValueError:
        valid = False
    if not valid:
        raise RecordsError(f"--date {date}: expected a date written YYYY-MM-DD, e.g. 2025-01-31")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


ARTIFACT_NAME = "final_model_seed{seed}.int8.ptz"  # a seed's artifact, beside its log, in a folder
PER_SEED_FILES = ("train_seed*.log", "final_model_seed*.int8.ptz")  # what folder writes per seed


def parse_artifact_options(options: list[str]) -> dict[int, Path]:
    """--artifact SEED=PATH options as {seed: path}."""
    given = {}
    for option in options or []:
        seed, sep, path = option.partition("=")
        if not sep or not seed.strip().isdigit() or not path:
            raise RecordsError(f"--artifact {option}: expected SEED=PATH")
        given[int(seed)] = Path(path)
    return given


def find_artifact(run: Run, given: dict[int, Path]) -> Path:
    """A run's compressed model: --artifact SEED=PATH, else beside its log as
    final_model_seed<SEED>.int8.ptz or <log name without suffix>.int8.ptz.
    Its size must be the bytes_model the log reports, so a stale or swapped file is caught."""
    if run.seed in given:
        candidates = [given[run.seed]]
    else:
        candidates = [run.source.parent / ARTIFACT_NAME.format(seed=run.seed),
                      run.source.with_suffix(".int8.ptz")]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        looked = " and ".join(map(str, candidates))
        raise RecordsError(f"{run.source}: no artifact for seed {run.seed} (looked for "
                           f"{looked}; give --artifact {run.seed}=PATH)")
    size = found.stat().st_size
    if run.bytes_model is not None and size != run.bytes_model:
        raise RecordsError(f"{found}: {size} bytes, but the log of seed {run.seed} reports "
                           f"bytes_model:{run.bytes_model}; is this that run's artifact?")
    return found


def build_folder(runs: list[Run], args) -> Path:
    out, script = Path(args.out), Path(args.script)
    requirements = Path(args.requirements or script.parent / "requirements.txt")
    not_logs = [str(r.source) for r in runs if r.final == "json"]
    if not_logs:
        raise RecordsError(f"{not_logs[0]}: a record folder needs each run's training log")
    # check every input before writing anything, so a failure leaves no half folder
    if out.exists() and not out.is_dir():
        raise RecordsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise RecordsError(f"{out}: folder exists and is not empty; pass --force to replace "
                           "the files this command writes")
    for given in (script, args.readme, args.requirements):
        if given and not Path(given).is_file():
            raise RecordsError(f"{given}: file not found")
    given = parse_artifact_options(args.artifact)
    unknown = sorted(set(given) - {r.seed for r in runs})
    if unknown:
        raise RecordsError(f"--artifact {unknown[0]}=...: no run has seed {unknown[0]}")
    # Challenge record folders hold no artifacts: they are copied only when asked for.
    artifacts = {}
    if args.with_artifacts or given:
        artifacts = {r.seed: find_artifact(r, given) for r in runs}
    code_bytes = script.stat().st_size
    sub = combined_submission(runs, args, bytes_code=code_bytes)
    readme = None if args.readme else generated_readme(
        runs, sub, script_defaults(script), bool(artifacts), requirements.is_file())
    for r in runs:  # the logs must come from the script being submitted
        if r.bytes_code is not None and r.bytes_code != code_bytes:
            print(f"warning: {r.source}: logged bytes_code {r.bytes_code} != {script} "
                  f"size {code_bytes}; is this the script that ran?", file=sys.stderr)
    if not requirements.is_file():
        print(f"warning: no {requirements}; the folder has no requirements.txt", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    # With --force: a seed log or artifact from an earlier assembly would join the
    # folder's seed table (`tools/records.py table FOLDER`), so those go; other files stay.
    for pattern in PER_SEED_FILES:
        for stale in out.glob(pattern):
            stale.unlink()
    shutil.copyfile(script, out / "train_gpt.py")
    for r in runs:
        shutil.copyfile(r.source, out / f"train_seed{r.seed}.log")
    for seed, artifact in artifacts.items():
        shutil.copyfile(artifact, out / ARTIFACT_NAME.format(seed=seed))
    _write_json(out / "submission.json", sub)
    if requirements.is_file():
        shutil.copyfile(requirements, out / "requirements.txt")
    if readme is None:
        shutil.copyfile(args.readme, out / "README.md")
    else:
        (out / "README.md").write_text(readme, encoding="utf-8")
    return out


TORCHRUN = "torchrun --standalone --nproc_per_node=8 train_gpt.py"
# Set apart from a run's other settings in its README: the seed on each command line, the
# data and tokenizer paths by the reviewer's environment.
PER_COMMAND = {"seed", "data_path", "tokenizer_path"}


def script_defaults(script: Path) -> dict | None:
    """The defaults of a train_gpt.py's Hyperparameters, read from its source without running
    it: `name: type = value` or `name: type = setting(value, ...)`, where value is a literal.
    None when the script has no such class."""
    try:
        tree = ast.parse(_read_text(script))
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ClassDef) and node.name == "Hyperparameters"):
            continue
        defaults = {}
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                    and item.value is not None):
                continue
            value = item.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "setting":
                value = value.args[0] if value.args else value
            try:
                defaults[item.target.id] = _as_export(ast.literal_eval(value))
            except (ValueError, TypeError, SyntaxError):
                pass  # not a literal: the run's value is always listed
        return defaults
    return None


def retrain_exports(run: Run, defaults: dict | None) -> list[str]:
    """The exports that give train_gpt.py the settings of a run that differ from its defaults
    (every logged setting when the defaults are unknown), less PER_COMMAND."""
    settings = logged_settings(run.source)
    return export_lines({k: v for k, v in settings.items() if k not in PER_COMMAND
                         and (defaults is None or k not in defaults or defaults[k] != v)})


def retrain_block(runs: list[Run], defaults: dict | None, requirements: bool) -> list[str]:
    """Shell lines that retrain every seed; runs with other settings each get a subshell."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(retrain_exports(r, defaults)), []).append(r)
    lines = ["pip install -r requirements.txt"] if requirements else []
    for exports, members in groups.items():
        body = list(exports) + [f"SEED={r.seed} {TORCHRUN}" for r in members]
        lines += body if len(groups) == 1 else ["("] + ["  " + b for b in body] + [")"]
    return lines


def generated_readme(runs: list[Run], sub: dict, defaults: dict | None, artifacts: bool,
                     requirements: bool) -> str:
    """A record folder's README: the scores, its files, and how to reproduce them from the
    folder alone."""
    lines = [f"# {sub['name']}", "", f"By {sub['author']} (@{sub['github_id']}), {sub['date']}.",
             "", sub["blurb"], "",
             "| seed | val_loss | val_bpb | bytes_total | steps | train s | eval s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r.seed} | {r.val_loss:.8f} | {r.val_bpb:.8f} | {r.bytes_total} "
                     f"| {r.steps} | {r.train_time_s:.1f} | {r.eval_time_s:.1f} |")
    spread = (f" ± {statistics.stdev(r.val_bpb for r in runs):.8f} (sample sd)"
              if len(runs) > 1 else "")

    def names(pattern):
        return ", ".join(f"`{pattern.format(seed=r.seed)}`" for r in runs)

    lines += ["", f"Mean val_bpb {sub['val_bpb']:.8f}{spread}, mean val_loss "
              f"{sub['val_loss']:.8f}; the largest bytes_total (script and compressed model) is "
              f"{sub['bytes_total']}.", "", "## Files", "",
              "- `train_gpt.py`: the training script.",
              f"- {names('train_seed{seed}.log')}: each seed's training log.",
              "- `submission.json`: the mean scores and each seed's results."]
    if requirements:
        lines.append("- `requirements.txt`: the Python packages the script needs.")
    if artifacts:
        lines.append(f"- {names(ARTIFACT_NAME)}: each seed's compressed model.")
    exports = any(retrain_exports(r, defaults) for r in runs)
    which = ("The exports are every setting the runs logged." if defaults is None else
             "The exports are the runs' settings that differ from train_gpt.py's defaults."
             if exports else "The runs used train_gpt.py's default settings.")
    lines += ["", "## Reproduce", "",
              "Retrain each seed on 8 GPUs from this folder. train_gpt.py reads the data from "
              "`DATA_PATH` and the tokenizer from `TOKENIZER_PATH`; set them where the data is "
              f"not at its defaults. {which}", "",
              "```bash", *retrain_block(runs, defaults, requirements), "```", ""]
    if artifacts:
        lines += ["Re-score a seed's artifact without training (an artifact carries every "
                  "setting its score depends on; only `DATA_PATH` and `TOKENIZER_PATH` come from "
                  "the environment):", "", "```bash"]
        lines += [f"EVAL_ONLY=1 ARTIFACT={ARTIFACT_NAME.format(seed=r.seed)} {TORCHRUN}"
                  for r in runs]
        lines += ["```", ""]
    return "\n".join(lines)


# Settings that describe the run, not the model or its evaluation: a re-score sets its own.
NOT_REPLAYED = {"run_id", "run_note", "eval_only", "artifact"}


def _as_export(value):
    """A setting as train_gpt.py reads it from the environment: booleans as 0 and 1."""
    return int(value) if isinstance(value, bool) else value


def logged_settings(path: Path) -> dict:
    """The settings a train_gpt.py run logged in its 'hyperparameters: {...}' line, less
    NOT_REPLAYED."""
    for line in _read_text(path).splitlines():
        if line.startswith("hyperparameters: {"):
            try:
                settings = json.loads(line.removeprefix("hyperparameters: "))
            except json.JSONDecodeError:
                break
            return {k: _as_export(v) for k, v in settings.items() if k not in NOT_REPLAYED}
    raise RecordsError(f"{path}: no 'hyperparameters: {{...}}' line (is it a train_gpt.py log?)")


def export_lines(settings: dict) -> list[str]:
    return [f"export {k.upper()}={shlex.quote(str(v))}" for k, v in settings.items()]


def settings_exports(path: Path) -> str:
    """`export NAME=value` lines that give train_gpt.py the settings a logged run used."""
    return "\n".join(export_lines(logged_settings(path)))


def plot_runs(runs: list[Run], out: str) -> None:
    try:  # imported here so that the other subcommands work without it
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RecordsError("plot: matplotlib is not installed (pip install matplotlib)") from None
    from matplotlib.backend_bases import FigureCanvasBase
    image_format = Path(out).suffix.lower().removeprefix(".")
    formats = FigureCanvasBase.get_supported_filetypes()  # savefig finds the backend for each
    if image_format not in formats:
        raise RecordsError(f"{out}: the file name must end in an image format matplotlib "
                           f"writes ({', '.join('.' + f for f in sorted(formats))})")
    for r in runs:
        if not (r.train_curve or r.val_curve):
            raise RecordsError(f"{r.source}: no training curve to plot (plot needs a log)")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = [("train_curve", "train loss"), ("val_curve", "val BPB")]
    for row, (attr, ylabel) in enumerate(panels):
        for col, (index, xlabel) in enumerate([(0, "step"), (1, "wall-clock train time (s)")]):
            ax = axes[row][col]
            for r in runs:
                points = getattr(r, attr)
                ax.plot([p[index] for p in points], [p[2] for p in points],
                        marker="." if len(points) < 30 else None, label=f"seed {r.seed}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, format=image_format, dpi=100)
    plt.close(fig)


# --- Command line ------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text):
        return sub.add_parser(name, help=help_text, description=help_text)

    def with_runs(name, help_text):
        p = command(name, help_text)
        p.add_argument("runs", nargs="+", metavar="RUN",
                       help="Each RUN is a training log, a per-run submission.json, "
                            "or a folder of them.")
        return p

    def with_metadata(p):
        for flag, what in (("--name", "Name the record."), ("--author", "Give the author's name."),
                           ("--github-id", "Give the author's GitHub user name."),
                           ("--blurb", "Describe the record in a sentence or two.")):
            p.add_argument(flag, required=True, help=what)
        p.add_argument("--date", help="Date the record, written YYYY-MM-DD (default: today).")

    p = with_runs("table", "Print the per-seed table, the mean and sample standard deviation, "
                           "and optionally a one-sided t-test against the record to beat.")
    p.add_argument("--previous-val-loss", type=float, metavar="LOSS",
                   help="Run the t-test against this val_loss, the record to beat.")
    p.add_argument("--margin", type=float, default=0.005, metavar="NATS",
                   help="Require the runs to beat it by this many nats (default 0.005).")
    p.add_argument("--alpha", type=float, default=0.01,
                   help="Use this significance level for the t-test (default 0.01).")
    p = with_runs("submission", "Write the combined submission.json of the runs.")
    with_metadata(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="Write the submission.json to this file.")
    p.add_argument("--force", action="store_true", help="Replace FILE if it exists.")
    p = with_runs("folder", "Assemble a challenge record folder from the runs' logs.")
    with_metadata(p)
    p.add_argument("--out", required=True, metavar="FOLDER", help="Create the record folder here.")
    p.add_argument("--script", required=True,
                   help="Copy this training script, the one that made the runs, as train_gpt.py.")
    p.add_argument("--readme", help="Copy this README.md instead of generating one.")
    p.add_argument("--requirements",
                   help="Copy this requirements.txt (default: the one beside the script).")
    p.add_argument("--with-artifacts", action="store_true",
                   help="Copy each seed's compressed model into the folder as "
                        "final_model_seed<SEED>.int8.ptz, found beside its log as "
                        "final_model_seed<SEED>.int8.ptz or <log name>.int8.ptz (challenge "
                        "record folders hold none, so by default none is copied).")
    p.add_argument("--artifact", action="append", metavar="SEED=PATH",
                   help="Take seed SEED's compressed model from PATH; it can be given once per "
                        "seed and implies --with-artifacts.")
    p.add_argument("--force", action="store_true",
                   help="Write into an existing, non-empty folder: its per-seed logs and "
                        "artifacts are replaced, and its other files are kept.")
    p = with_runs("plot", "Plot the loss curves against steps and wall-clock time.")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="Write the image to this file; its extension names the format "
                        "(.png, .pdf, .svg or another that matplotlib writes).")
    p = command("settings", "Print a run's settings as shell exports, to re-score its artifact.")
    p.add_argument("log", type=Path, help="Read the settings from this train_gpt.py log.")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        date = getattr(args, "date", None)
        if date is not None:
            check_date(date)
        if args.command == "settings":
            print(settings_exports(args.log))
            return 0
        if args.command == "table":
            check_test_options(args.previous_val_loss, args.margin, args.alpha)
        runs = load_runs(args.runs)
        _warn_size(runs)
        if args.command == "table":
            reason = untestable([r.val_loss for r in runs])
            if args.previous_val_loss is not None and reason:
                print(f"warning: no t-test made: {reason}", file=sys.stderr)
            print(table_text(runs, args.previous_val_loss, args.margin, args.alpha))
        elif args.command == "submission":
            output = Path(args.output)
            if output.exists() and not args.force:
                raise RecordsError(f"{output}: exists; pass --force to replace it")
            _write_json(output, combined_submission(runs, args))
            print(f"wrote {args.output} ({len(runs)} seeds)")
        elif args.command == "folder":
            print(f"wrote record folder {build_folder(runs, args)}")
        else:
            plot_runs(runs, args.output)
            print(f"wrote {args.output}")
    except RecordsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped early (e.g. `| head`): nothing to report
        return 0
    except OSError as e:  # e.g. an output path that cannot be written
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
