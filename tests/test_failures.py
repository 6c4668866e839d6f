"""train_gpt.py when something goes wrong: bad input fails fast in one line, faults keep the weights, ranks agree."""
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, fails_fast, final_line, paths, run_script, write_shard

import train_gpt as tg


def read_shard(path):
    return np.fromfile(path, dtype="<u2", offset=1024)


@pytest.fixture
def data_copy(tmp_path, dataset):
    """A private copy of the fixture's shards, to spoil."""
    folder = tmp_path / "data"
    shutil.copytree(dataset, folder)
    return folder


# --- bad input: one line, exit code 2, before training --------------------------------------------------


def test_data_path_missing(tmp_path, tokenizer_path):
    fails_fast(tmp_path, paths(tmp_path / "nowhere", tokenizer_path), "DATA_PATH=", "nowhere", "not found")


@pytest.mark.parametrize("split", ["train", "val"])
def test_no_shards_of_a_split(tmp_path, data_copy, tokenizer_path, split):
    for path in data_copy.glob(f"fineweb_{split}_*.bin"):
        path.unlink()
    fails_fast(tmp_path, paths(data_copy, tokenizer_path), "DATA_PATH=", f"no fineweb_{split}_*.bin shards")


@pytest.mark.parametrize("field,value,expected", [(0, 12345, "bad header magic or version"),
                                                  (1, 2, "bad header magic or version"),
                                                  (2, 10**6, "header says 1000000 tokens")])
def test_bad_header_in_a_later_shard(tmp_path, data_copy, tokenizer_path, field, value, expected):
    shard = data_copy / "fineweb_train_000001.bin"  # the stream would reach it only mid-run
    header = np.fromfile(shard, dtype="<i4", count=256)
    header[field] = value
    shard.write_bytes(header.tobytes() + shard.read_bytes()[1024:])
    fails_fast(tmp_path, paths(data_copy, tokenizer_path), "fineweb_train_000001.bin", expected)


def test_truncated_shard(tmp_path, data_copy, tokenizer_path):
    shard = data_copy / "fineweb_val_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-6])
    fails_fast(tmp_path, paths(data_copy, tokenizer_path), "fineweb_val_000000.bin", "header says")


def test_tokenizer_missing(tmp_path, dataset):
    fails_fast(tmp_path, paths(dataset, tmp_path / "none.model"), "TOKENIZER_PATH=", "none.model", "not found")


def test_tokenizer_not_a_model(tmp_path, dataset):
    (tmp_path / "junk.model").write_bytes(b"not a model")
    fails_fast(tmp_path, paths(dataset, tmp_path / "junk.model"), "TOKENIZER_PATH=", "not a SentencePiece model")


def test_tokenizer_vocabulary_differs_from_vocab_size(tmp_path, dataset, tokenizer_path):
    fails_fast(tmp_path, paths(dataset, tokenizer_path, VOCAB_SIZE=512), "TOKENIZER_PATH=", "320 pieces", "VOCAB_SIZE=512")


def test_validation_token_out_of_vocabulary(tmp_path, data_copy, tokenizer_path):
    shard = data_copy / "fineweb_val_000000.bin"
    tokens = read_shard(shard).copy()
    tokens[100] = 320
    write_shard(shard, tokens)
    fails_fast(tmp_path, paths(data_copy, tokenizer_path), "fineweb_val_000000.bin", "token 320 at position 100",
               "VOCAB_SIZE=320")


def test_validation_shorter_than_one_sequence(tmp_path, data_copy, tokenizer_path):
    write_shard(data_copy / "fineweb_val_000000.bin", read_shard(data_copy / "fineweb_val_000000.bin")[:64])
    fails_fast(tmp_path, paths(data_copy, tokenizer_path), "DATA_PATH=", "64 tokens", "TRAIN_SEQ_LEN+1=65")


def test_validation_of_one_sequence_is_enough(data_copy, tokenizer_path):
    write_shard(data_copy / "fineweb_val_000000.bin", read_shard(data_copy / "fineweb_val_000000.bin")[:65])
    hp = tg.Hyperparameters.from_env({**TINY, **paths(data_copy, tokenizer_path)})
    tg.validate_setup(hp, tg.Run(0, 1, torch.device("cpu"), None), None)


@pytest.mark.parametrize("name,value,expected", [
    ("NUM_LAYERS", "eight", "is not a valid int"),
    ("TTT_ENABLED", "yes", "is not a valid bool"),
    ("QUANT_BITS", "9", "must be in 2..8"),
    ("WARMDOWN_SHAPE", "step", "must be linear or cosine"),
    ("EVAL_STRIDE", "65", "must be in 0..TRAIN_SEQ_LEN=64"),
    ("SLIDING_WINDOW", "0", "must be >= 1"),
    ("TRAIN_SEQ_LEN", "0", "must be >= 1"),
    ("ATTN_BACKEND", "flash3", "must be auto, flash, flex or reference"),
])
def test_bad_setting(tmp_path, dataset, tokenizer_path, name, value, expected):
    fails_fast(tmp_path, paths(dataset, tokenizer_path, **{name: value}), f"{name}=", expected)


@pytest.mark.parametrize("name,value,expected", [
    ("MATRIX_LR", "fast", "is not a valid float"),
    ("ZSTD_LEVEL", "0", "must be in 1..22"),
    ("SWA_LR_BELOW", "1.5", "must be in 0..1"),
    ("EMBED_LR", "-0.1", "must be in 0..10"),
    ("ITERATIONS", "0", "must be >= 1"),
    ("TTT_FREEZE_BLOCKS", "3", "must be in 0..NUM_LAYERS=2"),
    ("ADAM_EPS", "nan", "must be a finite number"),
    ("SEED", "-1", "must be in 0..4294967295"),
])
def test_bad_setting_in_process(name, value, expected):
    """The same path as above, without the subprocess: Hyperparameters.from_env raises what main reports."""
    with pytest.raises(tg.ConfigError) as error:
        tg.Hyperparameters.from_env({**TINY, name: value})
    assert str(error.value).startswith(f"{name}=") and expected in str(error.value)


def test_every_default_is_within_its_limit():
    limited = [f for f in tg.dataclasses.fields(tg.Hyperparameters) if "limit" in f.metadata]
    assert len(limited) > 40
    for field in limited:
        test, _ = field.metadata["limit"]
        assert test(getattr(tg.Hyperparameters(), field.name), tg.Hyperparameters()), field.name


@pytest.mark.parametrize("extra,expected", [
    (dict(TRAIN_BATCH_TOKENS=200), "TRAIN_BATCH_TOKENS=200 does not split"),
    (dict(GRAD_ACCUM_STEPS=8), "TRAIN_BATCH_TOKENS=256 does not split"),
    (dict(NUM_HEADS=3), "NUM_HEADS=3"),
    (dict(NUM_KV_HEADS=3), "NUM_KV_HEADS=3"),
])
def test_inconsistent_shapes(tmp_path, dataset, tokenizer_path, extra, expected):
    fails_fast(tmp_path, paths(dataset, tokenizer_path, **extra), expected)


def test_eval_only_without_the_artifact(tmp_path, dataset, tokenizer_path):
    fails_fast(tmp_path, paths(dataset, tokenizer_path, EVAL_ONLY=1, ARTIFACT="gone.ptz"), "ARTIFACT=gone.ptz", "FileNotFoundError")


# --- faults keep the weights -----------------------------------------------------------------------------


def assert_finite_artifact(cwd, artifact, raw, key):
    state = torch.load(cwd / raw)
    assert all(torch.isfinite(t).all() for t in state[key].values())
    weights = tg.unpack_artifact((cwd / artifact).read_bytes())
    assert weights.keys() == state[key].keys()
    assert all(torch.isfinite(t).all() for t in weights.values())


def rescore(cwd, data, tokenizer, artifact):
    again = run_script(cwd, paths(data, tokenizer, EVAL_ONLY=1, ARTIFACT=artifact, TTT_ENABLED=0))
    assert again.returncode == 0, again.stderr[-2000:]
    assert math.isfinite(float(final_line(again.stdout, "final_int8_zstd_roundtrip_exact")["val_bpb"]))


def test_bad_token_in_a_later_train_shard_stops_and_keeps_the_weights(tmp_path, data_copy, tokenizer_path):
    first, second = data_copy / "fineweb_train_000000.bin", data_copy / "fineweb_train_000001.bin"
    write_shard(first, read_shard(first)[:600])  # warm-up stays inside it; step 3 reaches the second shard
    tokens = read_shard(second).copy()
    tokens[5] = 400
    write_shard(second, tokens)
    result = run_script(tmp_path, paths(data_copy, tokenizer_path, VAL_LOSS_EVERY=0))
    assert result.returncode == 2
    assert "fineweb_train_000001.bin: token 400 at position 5" in result.stderr
    assert "saved the weights to interrupted_model.int8.ptz" in result.stderr
    assert torch.load(tmp_path / "interrupted_model.pt")["step"] == 2
    # no step was averaged yet: the model's own weights
    assert_finite_artifact(tmp_path, "interrupted_model.int8.ptz", "interrupted_model.pt", "model")


def test_non_finite_loss_stops_with_the_step_and_saves_no_spoilt_weights(tmp_path, dataset, tokenizer_path):
    result = run_script(tmp_path, paths(dataset, tokenizer_path, WEIGHT_DECAY=1e30))  # Muon: w *= 1 - lr wd
    assert result.returncode == 3, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("stopped: train_loss is not finite at step ")
    assert line.endswith("; no averaged weights to save")  # it overflowed before the warmdown's tail
    assert not list(tmp_path.glob("*.pt*"))


def test_sigterm_saves_the_weights_and_exits_cleanly(tmp_path, dataset, tokenizer_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TINY, **paths(dataset, tokenizer_path, ITERATIONS=100000, TRAIN_LOG_EVERY=1, VAL_LOSS_EVERY=0))
    proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "train_gpt.py")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step:5/"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped: SIGTERM at step " in err and "EVAL_ONLY=1 ARTIFACT=interrupted_model.int8.ptz" in err
    log = next((tmp_path / "logs").glob("*.txt")).read_text()
    assert log.splitlines()[-1] == err.strip().splitlines()[-1], "the log ends with the stopped: line too"
    state = torch.load(tmp_path / "interrupted_model.pt")
    assert state["step"] >= 5 and state["average"]["samples"] == 0
    assert_finite_artifact(tmp_path, "interrupted_model.int8.ptz", "interrupted_model.pt", "model")
    rescore(tmp_path, dataset, tokenizer_path, "interrupted_model.int8.ptz")


def test_a_crash_in_evaluation_leaves_both_files(tmp_path, dataset, tokenizer_path):
    crash = ("import sys; sys.path.insert(0, sys.argv[1]); import train_gpt as tg\n"
             "def crash(*args): raise RuntimeError('evaluation crashed')\n"
             "tg.evaluate_artifact = crash\ntg.main()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TINY, **paths(dataset, tokenizer_path, ITERATIONS=4, VAL_LOSS_EVERY=0))
    result = subprocess.run([sys.executable, "-c", crash, str(ROOT)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "evaluation crashed" in result.stderr
    assert set(torch.load(tmp_path / "final_model.pt")) == set(tg.unpack_artifact((tmp_path / "final_model.int8.ptz").read_bytes()))
    rescore(tmp_path, dataset, tokenizer_path, "final_model.int8.ptz")


# --- several processes agree -----------------------------------------------------------------------------


def torchrun(cwd, env_extra, script, *args, timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TINY, **env_extra)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_score_as_one(tmp_path_factory, dataset, tokenizer_path):
    """Same global batch (2 ranks x 1 micro-step = 1 rank x 2): same training, same weights, same BPB."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    single = run_script(one, paths(dataset, tokenizer_path, GRAD_ACCUM_STEPS=2, VAL_LOSS_EVERY=0))
    double = torchrun(two, paths(dataset, tokenizer_path, GRAD_ACCUM_STEPS=1, VAL_LOSS_EVERY=0), ROOT / "train_gpt.py")
    assert single.returncode == 0, single.stderr[-2000:]
    assert double.returncode == 0, double.stderr[-3000:]  # includes: every rank's weights agree after training and TTT
    assert "world_size:2 grad_accum_steps:1" in double.stdout
    for when in ("after training", "after TTT"):
        assert f"ranks_agree {when}: " in double.stdout
    logged = [re.findall(r"^step:\d+/\d+ train_loss:(\S+)", out.stdout, re.M) for out in (single, double)]
    assert len(logged[0]) >= 3 and [float(v) for v in logged[1]] == pytest.approx([float(v) for v in logged[0]], abs=2e-4)
    for prefix in ("final_int8_zstd_roundtrip_exact", "legal_ttt_exact"):
        assert float(final_line(double.stdout, prefix)["val_bpb"]) == pytest.approx(
            float(final_line(single.stdout, prefix)["val_bpb"]), rel=1e-4), prefix


def test_rank_check_catches_different_weights(tmp_path):
    script = tmp_path / "differ.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import train_gpt as tg\n"
        "dist.init_process_group('gloo')\n"
        "run = tg.Run(dist.get_rank(), 2, torch.device('cpu'), None)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))\n"
        "for p in model.parameters(): torch.nn.init.constant_(p, 0.5)\n"
        "tg.check_ranks_agree(run, model, 'when equal')\n"
        "with torch.no_grad(): model[1].bias[0] += run.rank * 1e-6\n"
        "try:\n"
        "    tg.check_ranks_agree(run, model, 'after a nudge')\n"
        "except tg.RunStopped as stop:\n"
        "    open(f'caught{run.rank}.txt', 'w').write(str(stop))\n"
        "dist.destroy_process_group()\n")
    result = torchrun(tmp_path, {}, script, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for rank in (0, 1):  # both ranks see the disagreement, so both stop
        assert (tmp_path / f"caught{rank}.txt").read_text() == \
            "ranks hold different weights after a nudge: 1 tensors differ, first 1.bias"


def test_the_training_clock_starts_once_every_rank_has_warmed_up(tmp_path, dataset, tokenizer_path):
    """Ranks compile their own evaluation shapes in the warm-up, so one may finish it minutes after another (on two
    H200s, 3.5 minutes): the clock must not start while a rank is still warming up. Here rank 1's warm-up ends 5 s late."""
    script = tmp_path / "late.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import train_gpt as tg\n"
        "compile_evaluation = tg.compile_evaluation\n"
        "def late(model, compiled, data, hp, run):\n"
        "    compile_evaluation(model, compiled, data, hp, run)\n"
        "    time.sleep(5 * run.rank)\n"
        "tg.compile_evaluation = late\n"
        "sys.exit(tg.main())\n")
    result = torchrun(tmp_path, paths(dataset, tokenizer_path, GRAD_ACCUM_STEPS=1, ITERATIONS=2, TRAIN_LOG_EVERY=1,
                                      VAL_LOSS_EVERY=0, TTT_ENABLED=0), script)
    assert result.returncode == 0, result.stderr[-2000:]
    first = re.search(r"^step:1/2 train_loss:\S+ train_time:(\d+)ms", result.stdout, re.M)
    assert first and int(first.group(1)) < 2500, result.stdout[-2000:]
