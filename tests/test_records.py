"""Tests for tools/records.py: log parsing, errors, statistics, submission, folder, plot."""
import argparse
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "tools" / "records.py"
sys.path.insert(0, str(RECORDS.parent))
import records  # noqa: E402

# Source-code noise as it appears at the top of a real log: these lines mention
# the same words as the real ones but must never be parsed.
SOURCE_NOISE = '''\
import os
    log(f"step:{step}/{n} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} train_time:{t}ms")
    log(f"seed:{args.seed}")
        print("step:99999/20000 val_loss:0.1000 val_bpb:0.0500 train_time:1ms step_avg:1.00ms")
# legal_ttt_exact val_loss:0.00000001 val_bpb:0.00000001 eval_time:1ms
    log(f"artifact bytes_code:{c} bytes_model:{m} bytes_total:{c + m}")
'''


def make_log(seed=1337, val_loss=1.93654321, val_bpb=1.14701234, ttt=True,
             final=True, bytes_total=15873579, seed_line=True):
    lines = [SOURCE_NOISE.rstrip("\n")]
    if seed_line:
        lines.append(f"seed:{seed}")
    lines += [
        "world_size:8 grad_accum_steps:1",
        "step:0/20000 val_loss:6.9315 val_bpb:4.1052 train_time:0ms step_avg:0.00ms",
        "step:10/20000 train_loss:5.1234 train_time:907ms step_avg:90.70ms",
        "step:20/20000 train_loss:4.5000 train_time:1814ms step_avg:90.70ms",
        "step:200/20000 val_loss:3.1000 val_bpb:1.8360 train_time:18140ms step_avg:90.70ms",
        "step:6610/20000 train_loss:2.0000 train_time:599500ms step_avg:90.70ms",
        "stopping_early: wallclock_cap train_time:600012ms step:6615/20000",
        "step:6615/20000 val_loss:1.9600 val_bpb:1.1600 train_time:600012ms step_avg:90.70ms",
    ]
    if final:
        lines.append(f"artifact bytes_code:61234 bytes_model:{bytes_total - 61234} "
                     f"bytes_total:{bytes_total}")
        lines.append("final_int8_zstd_roundtrip_exact val_loss:1.95123456 "
                     "val_bpb:1.15612345 eval_time:41234ms")
        if ttt:
            lines.append(f"legal_ttt_exact val_loss:{val_loss:.8f} val_bpb:{val_bpb:.8f} "
                         "eval_time:498765ms")
    return "\n".join(lines) + "\n"


def make_eval_only_log(seed=1000, artifact="final_model.int8.ptz"):
    """What an EVAL_ONLY=1 re-score logs: no training progress, then the usual final lines."""
    return "\n".join([
        SOURCE_NOISE.rstrip("\n"), f"seed:{seed}",
        "kernels: scan:reference conv:reference attn:reference",
        f"eval_only: scoring {artifact}",
        "artifact bytes_code:61234 bytes_model:15000000 bytes_total:15061234",
        "final_int8_zstd_roundtrip_exact val_loss:1.95123456 val_bpb:1.15612345 eval_time:41234ms",
        "legal_ttt_exact val_loss:1.93654321 val_bpb:1.14701234 eval_time:498765ms"]) + "\n"


def write_runs(tmp_path, losses, bpbs=None, bytes_total=15_000_000):
    paths = []
    for i, loss in enumerate(losses):
        bpb = bpbs[i] if bpbs else loss * 0.6
        p = tmp_path / f"run{i}.txt"
        p.write_text(make_log(seed=1000 + i, val_loss=loss, val_bpb=bpb,
                             bytes_total=bytes_total + i))
        paths.append(str(p))
    return paths


def run_cli(*args):
    return subprocess.run([sys.executable, str(RECORDS), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


# --- parsing -----------------------------------------------------------------

def test_parse_log_ignores_source_noise_and_prefers_ttt(tmp_path):
    p = tmp_path / "train.log"
    p.write_text(make_log())
    run = records.parse_log(p)
    assert run.seed == 1337
    assert run.val_loss == pytest.approx(1.93654321)
    assert run.val_bpb == pytest.approx(1.14701234)
    assert run.final == "ttt"
    assert run.bytes_total == 15873579 and run.bytes_code == 61234
    assert run.steps == 6615  # not 99999 from the noise line
    assert run.train_time_s == pytest.approx(600.012)
    assert run.eval_time_s == pytest.approx(41.234 + 498.765)
    assert [s for s, _, _ in run.train_curve] == [10, 20, 6610]
    assert [s for s, _, _ in run.val_curve] == [0, 200, 6615]
    assert run.val_curve[1][1:] == pytest.approx((18.14, 1.836))


def test_parse_log_falls_back_to_roundtrip(tmp_path):
    p = tmp_path / "train.txt"
    p.write_text(make_log(ttt=False))
    run = records.parse_log(p)
    assert run.final == "roundtrip"
    assert run.val_loss == pytest.approx(1.95123456)
    assert run.val_bpb == pytest.approx(1.15612345)
    assert run.eval_time_s == pytest.approx(41.234)


def test_parse_per_run_submission_json(tmp_path):
    p = tmp_path / "submission.json"
    p.write_text(json.dumps({
        "val_loss": 1.94, "val_bpb": 1.15, "roundtrip_val_loss": 1.95,
        "roundtrip_val_bpb": 1.16, "bytes_total": 15_900_000, "bytes_code": 60_000,
        "bytes_model": 15_840_000, "steps": 6600, "train_time_s": 600.0,
        "eval_time_s": 540.0, "seed": 42, "world_size": 8, "device": "H100",
        "torch_version": "2.8", "backends": {"attn": "flash"}, "over_limit": False,
        "run": "test"}))
    run = records.parse_run_json(p)
    assert (run.seed, run.val_loss, run.val_bpb) == (42, 1.94, 1.15)
    assert (run.bytes_total, run.steps, run.eval_time_s) == (15_900_000, 6600, 540.0)
    # a directory holding only submission.json is read the same way
    [from_dir] = records.load_runs([str(tmp_path)])
    assert from_dir.seed == 42


def test_duplicate_seed_is_refused(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text(make_log(seed=7))
    b.write_text(make_log(seed=7))
    with pytest.raises(records.RecordsError, match="seed 7"):
        records.load_runs([str(a), str(b)])


def test_diverged_run_is_refused(tmp_path):
    p = tmp_path / "train.log"
    p.write_text(make_log().replace("legal_ttt_exact val_loss:1.93654321",
                                    "legal_ttt_exact val_loss:nan"))
    with pytest.raises(records.RecordsError, match="not finite"):
        records.load_runs([str(p)])


# --- errors via the command line -----------------------------------------------

@pytest.mark.parametrize("kind, expected", [
    ("truncated", "truncated"),
    ("no_seed", "no 'seed:N' line"),
    ("json_missing", "missing key(s) seed"),
])
def test_bad_input_gives_one_line_error_and_exit_2(tmp_path, kind, expected):
    if kind == "truncated":  # killed mid-training: no artifact, no final line
        p = tmp_path / "train.log"
        p.write_text(make_log(final=False))
    elif kind == "no_seed":
        p = tmp_path / "train.log"
        p.write_text(make_log(seed_line=False))
    else:
        p = tmp_path / "submission.json"
        p.write_text(json.dumps({"val_loss": 1.9, "val_bpb": 1.1}))
    result = run_cli("table", p)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: {p}: ") and expected in lines[0]


# --- statistics ----------------------------------------------------------------

def test_t_test_hand_computed_df2():
    t, df, p = records.one_sided_test([1.90, 1.91, 1.92], previous=1.93, margin=0.005)
    assert df == 2
    assert t == pytest.approx(0.015 / (0.01 / math.sqrt(3)), rel=1e-9)
    assert t == pytest.approx(2.598, abs=1e-3)
    # closed form of the Student-t tail for df = 2
    assert p == pytest.approx(0.5 * (1 - t / math.sqrt(t * t + 2)), rel=1e-9)
    assert p == pytest.approx(0.0608, abs=1e-4)


def test_t_test_df1_is_cauchy():
    # two seeds: mean 1.91, sample sd 0.01 * sqrt(2), so se = 0.01 and t = 0.015 / 0.01
    t, df, p = records.one_sided_test([1.90, 1.92], previous=1.93, margin=0.005)
    assert (df, t) == (1, pytest.approx(1.5, rel=1e-9))
    assert p == pytest.approx(0.5 - math.atan(1.5) / math.pi, rel=1e-9)  # Cauchy tail: 0.1872
    # the other side of the target: same |t|, the complementary tail
    t, _, p = records.one_sided_test([1.93, 1.95], previous=1.93, margin=0.005)
    assert t == pytest.approx(-1.5, rel=1e-9)
    assert p == pytest.approx(0.5 + math.atan(1.5) / math.pi, rel=1e-9)


def test_t_test_critical_value_from_the_table():
    # t(0.99, df=4) = 3.746947: a mean exactly that many standard errors below the target
    # gives p = 0.01
    losses = [1.90, 1.91, 1.92, 1.93, 1.94]  # mean 1.92, sample sd 0.0158114, se 0.00707107
    target = 1.92 + 3.746947 * statistics.stdev(losses) / math.sqrt(5)
    t, df, p = records.one_sided_test(losses, previous=target + 0.005, margin=0.005)
    assert df == 4 and t == pytest.approx(3.746947, rel=1e-9)
    assert p == pytest.approx(0.01, rel=1e-5)


def test_t_test_identical_seeds_and_missing_scipy(monkeypatch):
    # zero spread or one seed: t is undefined, not +-inf with p = 0 or 1
    with pytest.raises(ValueError, match="standard deviation is 0"):
        records.one_sided_test([1.9, 1.9, 1.9], previous=1.93, margin=0.005)
    with pytest.raises(ValueError, match="needs >= 2 seeds"):
        records.one_sided_test([1.9], previous=1.93, margin=0.005)
    monkeypatch.setitem(sys.modules, "scipy", None)  # makes `from scipy import stats` fail
    with pytest.raises(records.RecordsError, match="needs scipy"):
        records.one_sided_test([1.90, 1.91], previous=1.93, margin=0.005)


def test_table_cli_reports_verdict(tmp_path):
    paths = write_runs(tmp_path, [1.90, 1.91, 1.92])
    out = run_cli("table", *paths, "--previous-val-loss", 1.93).stdout
    assert "t = 2.5981" in out and "df = 2" in out and "p = 0.0608" in out
    assert "NOT significant at alpha = 0.01" in out
    assert "1.91000000" in out and "0.01000000" in out  # mean and sample sd
    out = run_cli("table", *paths, "--previous-val-loss", 1.93, "--alpha", 0.1).stdout
    assert "SIGNIFICANT at alpha = 0.1" in out and "NOT" not in out
    out = run_cli("table", paths[0], "--previous-val-loss", 1.93).stdout
    assert "needs >= 2 seeds" in out


@pytest.mark.parametrize("losses, reason", [
    ([1.90, 1.90, 1.90], "the 3 seeds have the same val_loss, so the sample standard deviation "
                         "is 0 and t is undefined"),
    ([1.90], "the t-test needs >= 2 seeds (have 1)"),
])
def test_table_makes_no_test_on_a_degenerate_sample(tmp_path, losses, reason):
    result = run_cli("table", *write_runs(tmp_path, losses), "--previous-val-loss", 1.93)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"warning: no t-test made: {reason}"]
    assert f"no t-test made: {reason}" in result.stdout
    assert "SIGNIFICANT" not in result.stdout.upper() and "t = " not in result.stdout
    assert "1.90000000" in result.stdout  # the table itself is there
    assert run_cli("table", *write_runs(tmp_path, losses)).stderr == ""  # no test asked for


# option -> (values refused, what the error says is expected)
REFUSED_TEST_OPTIONS = {
    "--previous-val-loss": (["nan", "inf", "-inf", "0"], "expected a finite val_loss > 0"),
    "--alpha": (["2", "1", "0", "nan"],
                "expected a significance level between 0 and 1, both excluded"),
    "--margin": (["-1", "inf", "nan"], "expected a finite number of nats >= 0"),
}


@pytest.mark.parametrize("option, value", [(option, value) for option, (values, _)
                                           in REFUSED_TEST_OPTIONS.items() for value in values])
def test_table_refuses_meaningless_test_options(tmp_path, option, value):
    expected = REFUSED_TEST_OPTIONS[option][1]
    paths = write_runs(tmp_path, [1.90, 1.91, 1.92])
    extra = [] if option == "--previous-val-loss" else ["--previous-val-loss", "1.93"]
    result = run_cli("table", *paths, *extra, f"{option}={value}")  # = lets "-inf" be a value
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {option} {float(value)}: {expected}"]


@pytest.mark.parametrize("key, value, expected", [
    ("val_loss", float("nan"), "is not a finite number >= 0 (nan)"),
    ("val_bpb", float("inf"), "is not a finite number >= 0 (inf)"),
    ("train_time_s", float("inf"), "is not a finite number >= 0 (inf)"),
    ("val_loss", -1.9, "is not a finite number >= 0 (-1.9)"),
    ("bytes_total", 15_000_000.5, "is not a whole number (15000000.5)"),
    ("steps", "6600", "is not a finite number >= 0 ('6600')"),
])
def test_meaningless_numbers_in_a_run_json_are_refused(tmp_path, key, value, expected):
    data = {"seed": 1, "val_loss": 1.9, "val_bpb": 1.1, "bytes_total": 15_000_000, key: value}
    p = tmp_path / "submission.json"
    p.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
    result = run_cli("table", p)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"error: {p}: key {key} {expected}"]


def test_a_whole_float_count_in_a_run_json_is_taken_as_an_integer(tmp_path):
    p = tmp_path / "submission.json"
    p.write_text(json.dumps({"seed": 1.0, "val_loss": 1.9, "val_bpb": 1.1, "bytes_total": 1.5e7}))
    result = run_cli("table", p)
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[1].split()
    assert row[:4] == ["1", "1.90000000", "1.10000000", "15000000"]


def test_a_negative_loss_in_a_log_is_refused(tmp_path):
    [path] = write_runs(tmp_path, [-1.9])
    result = run_cli("table", path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {path}: final val_loss/val_bpb is negative"]


# --- submission and folder --------------------------------------------------------

META = ["--name", "Test Record", "--author", "Ann", "--github-id", "ann",
        "--blurb", "A test.", "--date", "2025-01-02"]


def test_combined_submission(tmp_path):
    paths = write_runs(tmp_path, [1.90, 1.91, 1.92], bpbs=[1.10, 1.12, 1.14])
    out = tmp_path / "submission.json"
    assert run_cli("submission", *paths, *META, "-o", out).returncode == 0
    sub = json.loads(out.read_text())
    assert set(sub) == {"name", "author", "github_id", "val_bpb", "val_loss",
                        "bytes_total", "bytes_code", "blurb", "date", "seeds"}
    assert sub["val_loss"] == pytest.approx(1.91) and sub["val_bpb"] == pytest.approx(1.12)
    assert sub["bytes_total"] == 15_000_002  # max over seeds
    assert (sub["name"], sub["github_id"], sub["date"]) == ("Test Record", "ann", "2025-01-02")
    assert [s["seed"] for s in sub["seeds"]] == [1000, 1001, 1002]
    assert set(sub["seeds"][0]) == {"seed", "val_loss", "val_bpb", "bytes_total",
                                    "steps", "train_time_s", "eval_time_s"}
    assert sub["seeds"][1]["steps"] == 6615


def test_submission_replaces_an_existing_file_only_with_force(tmp_path):
    paths = write_runs(tmp_path, [1.90, 1.91])
    out = tmp_path / "submission.json"
    out.write_text("mine")
    result = run_cli("submission", *paths, *META, "-o", out)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {out}: exists; pass --force to replace it"]
    assert out.read_text() == "mine"
    result = run_cli("submission", *paths, *META, "-o", out, "--force")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["val_loss"] == pytest.approx(1.905)


SCRIPT = """\
class Hyperparameters:
    data_path: str = "./data/datasets/fineweb10B_sp1024"
    seed: int = setting(1337, within(0, 2**32 - 1))
    num_layers: int = setting(8, COUNT)
    iterations: int = 20000
    ttt_enabled: bool = True
    max_wallclock_seconds: float = setting(600.0, AT_LEAST_0)
    warmdown_shape: str = setting("cosine", LINEAR_OR_COSINE)
    run_note: str = ""
"""


def small_runs(folder, losses, num_layers=(8, 8)):
    """Logs whose artifacts are small enough to write: bytes_model is 70,000 - 61,234 + i.
    Each logs its settings as train_gpt.py does; only num_layers may differ from SCRIPT's
    defaults, and run_id, data_path and seed always do."""
    folder.mkdir(exist_ok=True)
    paths = write_runs(folder, losses, bytes_total=70_000)
    for i, path in enumerate(paths):
        settings = {"data_path": "/mnt/data/sp1024", "seed": 1000 + i, "run_id": f"r{i}",
                    "num_layers": num_layers[i], "iterations": 20000, "ttt_enabled": True,
                    "max_wallclock_seconds": 600.0, "warmdown_shape": "cosine",
                    "run_note": "a b"}
        with open(path, "a") as f:
            f.write(f"hyperparameters: {json.dumps(settings)}\n")
    return paths


def write_artifact(path, run_index, size=None):
    path.write_bytes(bytes([run_index]) * (size or 70_000 - 61_234 + run_index))
    return path


def make_script(tmp_path):
    script = tmp_path / "my_script.py"
    script.write_text(SCRIPT)
    (tmp_path / "requirements.txt").write_text("numpy\n")
    return script


def bash_blocks(readme):
    return re.findall(r"```bash\n(.*?)```", readme, flags=re.S)


def follow_readme(folder, tmp_path, block):
    """Run a README's shell block inside the record folder as a reviewer would, with stand-ins
    for pip and torchrun that insist on their files being there; returns torchrun's calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    (bin_dir / "pip").write_text('#!/bin/sh\ntest "$1 $2" = "install -r" && test -f "$3"\n')
    (bin_dir / "torchrun").write_text(
        '#!/bin/sh\ntest -f "$3" || exit 9\ntest -z "$ARTIFACT" || test -f "$ARTIFACT" || exit 8\n'
        'echo "$* SEED=$SEED NUM_LAYERS=$NUM_LAYERS EVAL_ONLY=$EVAL_ONLY ARTIFACT=$ARTIFACT"'
        f' >> {calls}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "NUM_LAYERS": "", "SEED": ""}
    result = subprocess.run(["bash", "-euc", block], cwd=folder, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    return calls.read_text().splitlines()


TORCHRUN = "--standalone --nproc_per_node=8 train_gpt.py"


def test_folder_assembly_copies_no_artifacts(tmp_path):
    runs_dir = tmp_path / "runs"
    paths = small_runs(runs_dir, [1.90, 1.91], num_layers=(6, 6))  # no artifact anywhere
    script = make_script(tmp_path)
    out = tmp_path / "record"
    result = run_cli("folder", *paths, *META, "--out", out, "--script", script)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "requirements.txt", "submission.json", "train_gpt.py", "train_seed1000.log",
        "train_seed1001.log"]
    assert (out / "train_gpt.py").read_text() == script.read_text()
    assert (out / "train_seed1001.log").read_text() == Path(paths[1]).read_text()
    sub = json.loads((out / "submission.json").read_text())
    assert sub["bytes_code"] == len(SCRIPT)
    assert "bytes_code" in result.stderr  # logs say 61234 bytes, the script is smaller
    # the finished folder reads back as its runs (requirements.txt is not a log)
    assert [r.seed for r in records.load_runs([str(out)])] == [1000, 1001]

    readme = (out / "README.md").read_text()
    assert "| 1000 |" in readme and "records.py" not in readme and ".ptz" not in readme
    [block] = bash_blocks(readme)
    # only the setting that differs from the script's defaults; seed, paths and run_id not
    assert block.splitlines() == ["pip install -r requirements.txt", "export NUM_LAYERS=6",
                                  f"SEED=1000 torchrun {TORCHRUN}",
                                  f"SEED=1001 torchrun {TORCHRUN}"]
    assert follow_readme(out, tmp_path, block) == [
        f"{TORCHRUN} SEED={seed} NUM_LAYERS=6 EVAL_ONLY= ARTIFACT=" for seed in (1000, 1001)]


def test_folder_readme_keeps_each_seeds_own_settings(tmp_path):
    paths = small_runs(tmp_path / "runs", [1.90, 1.91], num_layers=(6, 8))
    out = tmp_path / "record"
    result = run_cli("folder", *paths, *META, "--out", out, "--script", make_script(tmp_path))
    assert result.returncode == 0, result.stderr
    [block] = bash_blocks((out / "README.md").read_text())
    assert "(" in block.splitlines()  # each group of settings in its own subshell
    assert follow_readme(out, tmp_path, block) == [
        f"{TORCHRUN} SEED=1000 NUM_LAYERS=6 EVAL_ONLY= ARTIFACT=",
        f"{TORCHRUN} SEED=1001 NUM_LAYERS= EVAL_ONLY= ARTIFACT="]


def test_folder_with_artifacts(tmp_path):
    runs_dir = tmp_path / "runs"
    paths = small_runs(runs_dir, [1.90, 1.91])
    # the two places looked at beside a log: final_model_seed<SEED>.int8.ptz and <log name>.int8.ptz
    first = write_artifact(runs_dir / "final_model_seed1000.int8.ptz", 0)
    second = write_artifact(runs_dir / "run1.int8.ptz", 1)
    script = make_script(tmp_path)
    (tmp_path / "requirements.txt").unlink()
    out = tmp_path / "record"
    result = run_cli("folder", *paths, *META, "--out", out, "--script", script, "--with-artifacts")
    assert result.returncode == 0, result.stderr
    assert "the folder has no requirements.txt" in result.stderr
    assert (out / "final_model_seed1000.int8.ptz").read_bytes() == first.read_bytes()
    assert (out / "final_model_seed1001.int8.ptz").read_bytes() == second.read_bytes()
    readme = (out / "README.md").read_text()
    assert "`final_model_seed1000.int8.ptz`, `final_model_seed1001.int8.ptz`" in readme
    retrain, rescore = bash_blocks(readme)
    assert "The runs used train_gpt.py's default settings." in readme
    assert "requirements" not in readme
    assert follow_readme(out, tmp_path, retrain) == [
        f"{TORCHRUN} SEED={seed} NUM_LAYERS= EVAL_ONLY= ARTIFACT=" for seed in (1000, 1001)]
    assert follow_readme(out, tmp_path, rescore) == [
        f"{TORCHRUN} SEED= NUM_LAYERS= EVAL_ONLY=1 ARTIFACT=final_model_seed{seed}.int8.ptz"
        for seed in (1000, 1001)]


def test_folder_readme_needs_the_logged_settings(tmp_path):
    paths = write_runs(tmp_path, [1.90])  # a log without a 'hyperparameters:' line
    out = tmp_path / "record"
    args = ["folder", *paths, *META, "--out", out, "--script", make_script(tmp_path)]
    result = run_cli(*args)
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.splitlines() == [
        f"error: {paths[0]}: no 'hyperparameters: {{...}}' line (is it a train_gpt.py log?)"]
    (tmp_path / "mine.md").write_text("# mine\n")
    assert run_cli(*args, "--readme", tmp_path / "mine.md").returncode == 0  # not needed then
    assert (out / "README.md").read_text() == "# mine\n"


def test_script_defaults_of_the_real_script():
    defaults = records.script_defaults(ROOT / "train_gpt.py")
    assert defaults["num_layers"] == 8 and defaults["ttt_enabled"] == 0
    assert defaults["data_path"] == "./data/datasets/fineweb10B_sp1024"
    assert records.script_defaults(RECORDS) is None  # no Hyperparameters class


def test_folder_artifact_given_by_option(tmp_path):
    paths = small_runs(tmp_path / "runs", [1.90])
    (tmp_path / "kept").mkdir()
    elsewhere = write_artifact(tmp_path / "kept" / "model.ptz", 0)
    out = tmp_path / "record"
    result = run_cli("folder", *paths, *META, "--out", out, "--script", make_script(tmp_path),
                     "--artifact", f"1000={elsewhere}")  # implies --with-artifacts
    assert result.returncode == 0, result.stderr
    assert (out / "final_model_seed1000.int8.ptz").read_bytes() == elsewhere.read_bytes()


@pytest.mark.parametrize("case, expected", [
    ("missing", "no artifact for seed 1001"),
    ("wrong_size", "reports bytes_model:8767"),
    ("bad_option", "expected SEED=PATH"),
    ("unknown_seed", "no run has seed 5"),
])
def test_folder_artifact_problems_stop_before_writing(tmp_path, case, expected):
    runs_dir = tmp_path / "runs"
    paths = small_runs(runs_dir, [1.90, 1.91])
    write_artifact(runs_dir / "final_model_seed1000.int8.ptz", 0)
    extra = ["--with-artifacts"]
    if case == "wrong_size":  # e.g. the artifact of another run, left beside this log
        write_artifact(runs_dir / "final_model_seed1001.int8.ptz", 1, size=9000)
    elif case != "missing":
        write_artifact(runs_dir / "final_model_seed1001.int8.ptz", 1)
        extra = ["--artifact", "1000" if case == "bad_option" else f"5={runs_dir / 'x'}"]
    out = tmp_path / "record"
    result = run_cli("folder", *paths, *META, "--out", out, "--script", make_script(tmp_path),
                     *extra)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert not out.exists()


def test_folder_refuses_an_existing_folder_without_force(tmp_path):
    runs_dir = tmp_path / "runs"
    paths = small_runs(runs_dir, [1.90, 1.91])
    out = tmp_path / "record"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    (out / "train_seed999.log").write_text("from an earlier assembly")
    (out / "final_model_seed999.int8.ptz").write_bytes(b"old")
    args = ["folder", *paths, *META, "--out", out, "--script", make_script(tmp_path)]

    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {out}: folder exists and is not empty; pass --force to replace the files this "
        "command writes"]
    assert sorted(p.name for p in out.iterdir()) == ["final_model_seed999.int8.ptz", "notes.md",
                                                     "train_seed999.log"]  # untouched

    result = run_cli(*args, "--force")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert "notes.md" in names and "train_seed1001.log" in names
    assert "train_seed999.log" not in names and "final_model_seed999.int8.ptz" not in names
    assert [r.seed for r in records.load_runs([str(out)])] == [1000, 1001]


@pytest.mark.parametrize("date", ["2025-13-01", "2025-02-30", "25-01-02", "2025/01/02",
                                  "2025-1-2", "today"])
def test_bad_date_is_refused(tmp_path, date):
    paths = write_runs(tmp_path, [1.90])
    meta = [a if a != "2025-01-02" else date for a in META]
    out = tmp_path / "submission.json"
    result = run_cli("submission", *paths, *meta, "-o", out)
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.strip().splitlines() == [
        f"error: --date {date}: expected a date written YYYY-MM-DD, e.g. 2025-01-31"]


# --- eval-only logs ---------------------------------------------------------------

def test_table_leaves_out_an_eval_only_log(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    write_runs(logs, [1.90, 1.91])
    # a reviewer's re-score of seed 1000's artifact, written to the same folder
    (logs / "rescore.txt").write_text(make_eval_only_log(seed=1000))
    result = run_cli("table", logs, "--previous-val-loss", 1.93)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"warning: {logs / 'rescore.txt'}: an eval-only run (it re-scored final_model.int8.ptz), "
        "not a training run; left out"]
    rows = [line.split()[0] for line in result.stdout.splitlines()[1:3]]
    assert rows == ["1000", "1001"] and "df = 1" in result.stdout

    only = tmp_path / "only"
    only.mkdir()
    (only / "rescore.txt").write_text(make_eval_only_log())
    result = run_cli("table", only)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {only}: no training run among the given logs")


# --- plot --------------------------------------------------------------------------

def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib", reason="plot needs matplotlib (pip install matplotlib)")
    paths = write_runs(tmp_path, [1.90, 1.91])
    out = tmp_path / "curves.png"
    result = run_cli("plot", *paths, "-o", out)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


@pytest.mark.parametrize("name, start", [("curves.svg", b"<?xml"), ("curves.PDF", b"%PDF")])
def test_plot_format_follows_the_extension(tmp_path, name, start):
    pytest.importorskip("matplotlib", reason="plot needs matplotlib (pip install matplotlib)")
    out = tmp_path / name
    result = run_cli("plot", *write_runs(tmp_path, [1.90]), "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(start)


@pytest.mark.parametrize("name", ["curves.txt", "curves"])
def test_plot_refuses_a_file_name_without_an_image_format(tmp_path, name):
    pytest.importorskip("matplotlib", reason="plot needs matplotlib (pip install matplotlib)")
    out = tmp_path / name
    result = run_cli("plot", *write_runs(tmp_path, [1.90]), "-o", out)
    assert result.returncode == 2 and not out.exists()
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {out}: the file name must end in an image format")
    assert ".png" in line and ".svg" in line


def test_log_cut_during_ttt_is_truncated(tmp_path):
    # killed in TTT
    text = make_log(ttt=False) + "ttt: 119 chunks of 524288 tokens, score first, then adapt\n"
    log = tmp_path / "cut.txt"
    log.write_text(text)
    result = subprocess.run([sys.executable, str(RECORDS), "table", str(log)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "truncated during TTT" in result.stderr


def test_settings_needs_a_hyperparameters_line(tmp_path):
    log = tmp_path / "old.txt"
    log.write_text(make_log())
    result = run_cli("settings", log)
    assert result.returncode == 2 and "no 'hyperparameters:" in result.stderr
    log.write_text(make_log() + 'hyperparameters: {"num_layers": 8, "run_note": "a b", '
                   '"use_smeargate": true, "data_path": "/data/my folder"}\n')
    result = run_cli("settings", log)
    assert result.stdout.splitlines() == [
        "export NUM_LAYERS=8", "export USE_SMEARGATE=1", "export DATA_PATH='/data/my folder'"]


# --- the command line itself ------------------------------------------------------

def help_texts(parser):
    """(where, text) of the parser's description and of every option's and command's help."""
    yield parser.prog, parser.description
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{parser.prog} {choice.dest}", choice.help
            for sub in action.choices.values():
                yield from help_texts(sub)
        elif not isinstance(action, argparse._HelpAction):
            yield f"{parser.prog} {'/'.join(action.option_strings) or action.dest}", action.help


def test_help_is_written_in_whole_sentences():
    texts = list(help_texts(records.build_parser()))
    assert len(texts) > 25
    for where, text in texts:
        assert text and text[0].isupper() and text.rstrip().endswith("."), (where, text)
    assert records.build_parser().description == records.__doc__


@pytest.mark.parametrize("command", ["", "table", "submission", "folder", "plot", "settings"])
def test_help_runs_from_any_folder(tmp_path, command):
    result = subprocess.run([sys.executable, str(RECORDS), *command.split(), "-h"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: records.py")


def test_table_runs_from_another_folder_with_relative_paths(tmp_path):
    write_runs(tmp_path, [1.90, 1.91])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, str(RECORDS), "table", "../run0.txt", "../run1.txt"],
                            capture_output=True, text=True, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "1.90500000" in result.stdout  # the mean
