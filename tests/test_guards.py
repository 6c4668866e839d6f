"""train_gpt.py refuses what would give a wrong answer that looks right: two runs writing one
folder, a misspelt setting, a re-score under other settings, a run that cannot fit in memory,
and bad values that would end in a traceback instead of one line."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY, fails_fast, final_line, paths, run_script, tiny_hp

import train_gpt as tg


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(extra)
    return env


# --- one training run a folder --------------------------------------------------------------------


def test_a_second_run_in_the_same_folder_stops_at_once_and_the_first_scores_its_own(
        tmp_path, dataset, tokenizer_path):
    first_env = clean_env(**{**TINY, **paths(dataset, tokenizer_path, RUN_ID="A", SEED=1,
                                             ITERATIONS=100000, MAX_WALLCLOCK_SECONDS=8,
                                             TTT_ENABLED=0, VAL_LOSS_EVERY=0)})
    first = subprocess.Popen([sys.executable, str(ROOT / "train_gpt.py")], cwd=tmp_path,
                             env=first_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = tmp_path / "logs/A.txt"
        deadline = time.time() + 60
        while not (log.is_file() and "lr_schedule:" in log.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the first run should still be training"
        # another RUN_ID and seed, OVERWRITE=1: only the folder lock can stop it
        started = time.time()
        second = run_script(tmp_path, paths(dataset, tokenizer_path, RUN_ID="B", SEED=2,
                                            OVERWRITE=1, TTT_ENABLED=0), timeout=60)
        assert second.returncode == 2, second.stderr[-2000:]
        line = second.stderr.strip().splitlines()
        assert len(line) == 1 and "is in use by another training run, RUN_ID=A" in line[0], line
        assert time.time() - started < 20 and "model_params" not in second.stdout
        # a run under the first's RUN_ID, in another folder, is stopped by the log's lock
        (tmp_path / "other").mkdir()
        third = run_script(tmp_path, paths(dataset, tokenizer_path, RUN_ID="A", OVERWRITE=1,
                                           ARTIFACT="other/final_model.int8.ptz"), timeout=60)
        assert third.returncode == 2 and "logs/A.txt is in use by another run" in third.stderr
        out, err = first.communicate(timeout=180)
    finally:
        first.kill()
    assert first.returncode == 0, err[-2000:]
    assert not (tmp_path / "logs/B.json").exists()
    summary = json.loads((tmp_path / "logs/A.json").read_text())
    roundtrip = float(final_line(out, "final_int8_zstd_roundtrip_exact")["val_bpb"])
    assert summary["roundtrip_val_bpb"] == pytest.approx(roundtrip, abs=1e-8)
    assert (tmp_path / "logs/A.txt").read_text().rstrip().endswith("wrote logs/A.json and logs/A.txt")


def test_an_artifact_replaced_after_it_was_written_is_not_scored(tmp_path, tokenizer_path):
    """If another process replaces the artifact between export and evaluation (a file system
    without locks, a user's copy), the run refuses to score what it did not write."""
    from conftest import tiny_data
    hp = tiny_hp(ttt_enabled=0, artifact=str(tmp_path / "model.ptz"))
    run = tg.Run(0, 1, torch.device("cpu"), None)
    data = tiny_data(tokenizer_path)
    model = tg.HymbaGPT(hp, tg.select_kernels(hp, run.device))
    results = tg.export_artifact(hp, run, data, model.state_dict(), tmp_path / "model.ptz",
                                 model.state_dict())
    assert (tmp_path / "model.pt").is_file()  # the raw weights lie beside the artifact
    tg.evaluate_artifact(hp, run, data, model, model, dict(results))  # as written: scored
    other = tg.HymbaGPT(tiny_hp(seed=3), tg.select_kernels(hp, run.device))
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    (tmp_path / "model.ptz").write_bytes(tg.pack_artifact(other.state_dict(), 8, 3)[0])
    with pytest.raises(tg.ConfigError, match="is not what this run wrote or read"):
        tg.evaluate_artifact(hp, run, data, model, model, dict(results))


# --- misspelt settings ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,value,meant", [
    ("NUM_LAYER", "3", "did you mean NUM_LAYERS?"),
    ("MODELDIM", "64", "did you mean MODEL_DIM?"),
    ("num_layers", "3", "did you mean NUM_LAYERS?"),
    ("TTT_EPOCH", "2", "did you mean TTT_EPOCHS?"),
    ("TTT_STEPS", "2", "the TTT_ settings are TTT_BATCH_SEQS, TTT_CHUNK_TOKENS"),
    ("EMA_DECAY", "0.99", "any more: the export is the last step's weights, or with SWA_LR_BELOW"),
])
def test_a_misspelt_setting_stops_the_run_naming_the_one_meant(tmp_path, dataset, tokenizer_path,
                                                               name, value, meant):
    line = fails_fast(tmp_path, paths(dataset, tokenizer_path, **{name: value}), name, meant)
    assert line.startswith(f"error: {name} is not a setting")


def test_other_environment_variables_pass():
    known = {field.name.upper() for field in tg.dataclasses.fields(tg.Hyperparameters)}
    others = ["HOME", "PATH", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TORCH_LOGS", "MASTER_PORT",
              "LOCAL_WORLD_SIZE", "NCCL_DEBUG", "PYTHONPATH", "TORCHELASTIC_RUN_ID", "OVERWRITE",
              "TRITON_INTERPRET", "HF_HOME", "LR", "EPOCHS", "DATA_DIR"]
    assert [name for name in others if tg.misspelt_setting(name, known)] == []
    assert tg.Hyperparameters.from_env({**os.environ, **TINY}).num_layers == 2


# --- re-scoring takes the run's settings ----------------------------------------------------------


def test_the_readme_rescore_command_reproduces_the_run_exactly(tiny_run, dataset, tokenizer_path):
    """`EVAL_ONLY=1 ARTIFACT=...` with nothing but the data's paths: the artifact brings every
    setting its score depends on (the tiny run's are far from the defaults: TRAIN_SEQ_LEN=64,
    TTT_EPOCHS=2, TTT_CHUNK_TOKENS=1024, EVAL_BATCH_SEQS=8)."""
    cwd, result = tiny_run
    env = clean_env(EVAL_ONLY="1", ARTIFACT="final_model.int8.ptz", RUN_ID="plain_rescore",
                    **paths(dataset, tokenizer_path))
    env = {k: v for k, v in env.items() if k.lower() not in tg.FIELDS or k in ("EVAL_ONLY",
                                                                               "ARTIFACT", "RUN_ID",
                                                                               "DATA_PATH",
                                                                               "TOKENIZER_PATH")}
    again = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    for prefix in ("final_int8_zstd_roundtrip_exact", "legal_ttt_exact"):
        assert final_line(again.stdout, prefix)["val_loss"] == final_line(result.stdout, prefix)["val_loss"]
        assert final_line(again.stdout, prefix)["val_bpb"] == final_line(result.stdout, prefix)["val_bpb"]
    assert "not the run's" not in again.stdout


def test_a_score_setting_given_at_rescore_is_used_and_said(tiny_run, dataset, tokenizer_path):
    cwd, result = tiny_run
    again = run_script(cwd, paths(dataset, tokenizer_path, EVAL_ONLY=1, RUN_ID="other_ttt",
                                  TTT_LR=0.001))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "eval_only: TTT_LR=0.001 as given, not the run's 0.0001" in again.stdout
    roundtrip = "final_int8_zstd_roundtrip_exact"
    assert final_line(again.stdout, roundtrip)["val_bpb"] == final_line(result.stdout, roundtrip)["val_bpb"]
    assert final_line(again.stdout, "legal_ttt_exact")["val_bpb"] != final_line(result.stdout, "legal_ttt_exact")["val_bpb"]


def test_rescoring_on_other_validation_data_is_said(tiny_run, tmp_path, dataset, tokenizer_path):
    cwd, _ = tiny_run
    from conftest import write_shard, make_documents  # noqa: F401
    import numpy as np
    (tmp_path / "data").mkdir()
    for shard in dataset.glob("*.bin"):
        tokens = np.fromfile(shard, dtype="<u2", offset=1024)
        write_shard(tmp_path / "data" / shard.name, tokens[::-1] if "val" in shard.name else tokens)
    again = run_script(cwd, paths(tmp_path / "data", tokenizer_path, EVAL_ONLY=1, TTT_ENABLED=0,
                                  RUN_ID="other_data"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "WARNING: the validation data (" in again.stdout and "is not the run's" in again.stdout


# --- memory: refused before a weight is built -----------------------------------------------------


@pytest.mark.parametrize("extra,expected", [
    (dict(MLP_MULT=100000), "GiB"),
    (dict(BIGRAM_BUCKETS=4_000_000_000), "GiB"),
])
def test_a_run_that_cannot_fit_in_memory_is_refused_in_its_first_seconds(
        tmp_path, dataset, tokenizer_path, extra, expected):
    line = fails_fast(tmp_path, paths(dataset, tokenizer_path, **extra), "this run needs about",
                      "parameters", "more than the", expected)
    assert "this machine (CPU)" in line


def test_an_eval_only_run_that_cannot_fit_is_refused(tiny_run, dataset, tokenizer_path):
    cwd, _ = tiny_run
    fails_fast(cwd, paths(dataset, tokenizer_path, EVAL_ONLY=1, TTT_BATCH_SEQS=10**8,
                          RUN_ID="huge_ttt"), "for a TTT step of")


def test_the_estimate_is_near_what_a_cpu_step_takes():
    """The estimate against tools/memory_use.py's measured peak of a CPU training step, at a
    shape unlike the record's: within half again either way."""
    sys.path.insert(0, str(ROOT / "tools"))
    import memory_use
    settings = dict(NUM_LAYERS="2", MODEL_DIM="256", NUM_HEADS="4", NUM_KV_HEADS="2",
                    TRAIN_SEQ_LEN="1024", TRAIN_BATCH_TOKENS="2048", GRAD_ACCUM_STEPS="1",
                    SLIDING_WINDOW="256", VOCAB_SIZE="1024", MLP_MULT="6")
    measured, estimated = memory_use.measure(settings)
    assert measured / 1.5 <= estimated <= measured * 1.5, (measured, estimated)


# --- one line, never a traceback ------------------------------------------------------------------


@pytest.mark.parametrize("name,value,expected", [
    ("RUN_ID", "a" * 300, "RUN_ID="),
    ("RUN_ID", "a\nb", "RUN_ID="),
    ("EMBED_LR", "1e38", "must be in 0..10"),
    ("SCALAR_LR", "1e300", "must be within float32's range"),
    ("BIGRAM_BUCKETS", "20000000000", "must be below 2**32"),
    ("HYMBA_CONV_KERNEL", "2147483648", "this run needs about"),
    ("ARTIFACT", "", "is a folder"),
    ("MLP_MULT", str(2**63), "MLP_MULT="),
    ("DATA_PATH", "a" * 300, "File name too long"),
    ("TOKENIZER_PATH", "a\nb", "a\\nb"),
])
def test_a_bad_value_ends_in_one_line(tmp_path, dataset, tokenizer_path, name, value, expected):
    env = paths(dataset, tokenizer_path)
    env[name] = value
    fails_fast(tmp_path, env, expected)


def test_an_artifact_that_is_a_folder_is_refused_before_training(tmp_path, dataset, tokenizer_path):
    (tmp_path / "afolder").mkdir()
    fails_fast(tmp_path, paths(dataset, tokenizer_path, ARTIFACT="afolder"), "ARTIFACT=afolder",
               "is a folder")
    fails_fast(tmp_path, paths(dataset, tokenizer_path, ARTIFACT="afolder", EVAL_ONLY=1),
               "is a folder")


# --- never silent for long ------------------------------------------------------------------------


def test_training_logs_its_first_step_and_its_last(tmp_path, dataset, tokenizer_path):
    result = run_script(tmp_path, paths(dataset, tokenizer_path, TRAIN_LOG_EVERY=100, ITERATIONS=5,
                                        VAL_LOSS_EVERY=0, TTT_ENABLED=0, WARMUP_STEPS=1))
    assert result.returncode == 0, result.stderr[-2000:]
    steps = [line.split()[0] for line in result.stdout.splitlines() if "train_loss:" in line]
    assert steps == ["step:1/5", "step:5/5"]
    assert "warmup: 1 training steps and each evaluation shape once" in result.stdout


def test_training_logs_a_step_whenever_30_seconds_pass_without_a_line(tmp_path, dataset,
                                                                      tokenizer_path, monkeypatch):
    lines = []

    def log_long_ago(self, message, console=True):  # as if every line came 31 s before the next
        lines.append(message)
        self.last_line = time.perf_counter() - 31

    monkeypatch.setattr(tg.Run, "log", log_long_ago)
    monkeypatch.chdir(tmp_path)
    hp = tiny_hp(data_path=str(dataset), tokenizer_path=str(tokenizer_path), iterations=5,
                 train_log_every=100, val_loss_every=0, ttt_enabled=0, warmup_steps=0)
    run = tg.Run(0, 1, torch.device("cpu"), None, tmp_path / "summary.json")
    tg.check_batch_shape(hp, run)
    kernels = tg.select_kernels(hp, run.device)
    model = tg.build_model(hp, kernels, run.device)
    tg.train_model(hp, run, model, model, tg.load_data(hp, run), {})
    steps = [line.split()[0] for line in lines if "train_loss:" in line]
    assert steps == [f"step:{i}/5" for i in range(1, 6)]
