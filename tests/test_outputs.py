"""train_gpt.py's outputs: nothing of an earlier run replaced, an artifact that says how to score it, a stop at any moment."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, fails_fast, final_line, paths, reference_kernels, tiny_data, tiny_hp

import train_gpt as tg


# --- nothing replaced: refused in the first seconds, before anything is written -------------------------------


def test_a_second_run_does_not_replace_the_first(tiny_run, dataset, tokenizer_path):
    cwd, _ = tiny_run
    before = {name: (cwd / name).read_bytes() for name in ("logs/tiny.json", "final_model.int8.ptz", "logs/tiny.txt")}
    fails_fast(cwd, paths(dataset, tokenizer_path), "final_model.int8.ptz exists", "OVERWRITE=1")
    (cwd / "elsewhere").mkdir(exist_ok=True)
    artifact = str(cwd / "final_model.int8.ptz")  # a fresh folder, but the same artifact, or the same RUN_ID's log
    fails_fast(cwd / "elsewhere", paths(dataset, tokenizer_path, ARTIFACT=artifact), "final_model.int8.ptz exists")
    fails_fast(cwd, paths(dataset, tokenizer_path, RUN_ID="tiny", EVAL_ONLY=1), "logs/tiny.json exists")
    assert before == {name: (cwd / name).read_bytes() for name in before}


def test_an_unwritable_output_folder_is_refused_before_training(tmp_path, dataset, tokenizer_path):
    (tmp_path / "afile").write_text("")
    fails_fast(tmp_path, paths(dataset, tokenizer_path, ARTIFACT="afile/model.ptz"), "afile/model.ptz", "cannot be written")


def test_settings_that_used_to_crash():
    with pytest.raises(tg.ConfigError, match="must be at most 100 letters, digits"):
        tg.Hyperparameters.from_env({**TINY, "RUN_ID": "a/b"})
    hp = tg.Hyperparameters.from_env({**TINY, "NUM_HEADS": "2", "NUM_KV_HEADS": "1", "MODEL_DIM": "8"})
    kernels = tg.select_kernels(hp, torch.device("cpu"))
    assert tg.HymbaGPT(hp, kernels).blocks[0].mixer.dt_rank == 1  # MODEL_DIM / 16 rounds to 0: one is the least


def test_the_record_defaults_on_cpu_are_refused_when_memory_is_short():
    hp = tg.Hyperparameters()
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if physical > 2**30 * 200:
        pytest.skip("this machine has the memory for the record's configuration on CPU")
    run = tg.Run(0, 1, torch.device("cpu"), None)
    tg.check_batch_shape(hp, run)
    with pytest.raises(tg.ConfigError, match=r"GiB of this machine \(CPU\)"):
        tg.check_memory(hp, run, tg.select_kernels(hp, run.device))


# --- the artifact says how it was trained --------------------------------------------------------------------


def test_eval_only_takes_the_model_settings_from_the_artifact(tiny_run, dataset, tokenizer_path):
    cwd, result = tiny_run
    model_settings = {name.upper() for name in tg.MODEL_SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in model_settings | {"RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    env.update({k: v for k, v in TINY.items() if k not in model_settings}, EVAL_ONLY="1", TTT_ENABLED="0",
               **paths(dataset, tokenizer_path))
    again = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    prefix = "final_int8_zstd_roundtrip_exact"
    assert final_line(again.stdout, prefix)["val_bpb"] == final_line(result.stdout, prefix)["val_bpb"]


@pytest.mark.parametrize("name,value", [("SLIDING_WINDOW", "32"), ("LOGIT_SOFTCAP", "15"), ("NUM_LAYERS", "3")])
def test_eval_only_refuses_a_setting_the_artifact_contradicts(tiny_run, dataset, tokenizer_path, name, value):
    cwd, _ = tiny_run
    fails_fast(cwd, paths(dataset, tokenizer_path, EVAL_ONLY=1, **{name: value}), f"{name}={value}", "ARTIFACT=")


@pytest.mark.parametrize("spoil", [lambda b: b[:len(b) // 2], lambda b: os.urandom(len(b))])
def test_eval_only_with_a_damaged_artifact_is_one_line(tiny_run, dataset, tokenizer_path, tmp_path, spoil):
    cwd, _ = tiny_run
    (tmp_path / "bad.ptz").write_bytes(spoil((cwd / "final_model.int8.ptz").read_bytes()))
    fails_fast(tmp_path, paths(dataset, tokenizer_path, EVAL_ONLY=1, ARTIFACT="bad.ptz"), "ARTIFACT=bad.ptz", "not readable")


# --- a stop at any moment ----------------------------------------------------------------------------------


def start(cwd, env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TINY, **env_extra)
    return subprocess.Popen([sys.executable, "-u", str(ROOT / "train_gpt.py")], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop_at(proc, prefix):
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    return "".join(lines) + out, err


def test_sigterm_in_evaluation_keeps_the_weights_and_the_final_results(tmp_path, dataset, tokenizer_path):
    """Also: with SWA_LR_BELOW=0 the last step's weights are exported, and the run says so."""
    proc = start(tmp_path, paths(dataset, tokenizer_path, ITERATIONS=4, SWA_LR_BELOW=0, VAL_LOSS_EVERY=0))
    out, err = stop_at(proc, "ttt:")
    assert proc.returncode == 0, err[-2000:]
    assert final_line(out, "final_prequant") == final_line(out, "final_last_step_prequant")  # scored once
    assert "swa: exporting the last step's weights" in out and "lr_schedule: cosine warmdown" in out
    line = err.strip().splitlines()[-1]
    assert line.startswith("stopped: SIGTERM after training: the weights are in final_model.int8.ptz"), err[-2000:]
    assert next((tmp_path / "logs").glob("*.txt")).read_text().splitlines()[-1] == line
    summary = json.loads(next((tmp_path / "logs").glob("*.json")).read_text())
    assert summary["roundtrip_val_bpb"] == pytest.approx(float(final_line(out, "final_int8_zstd_roundtrip_exact")["val_bpb"]))
    assert "val_bpb" not in summary and summary["stopped"] == line and summary["steps"] == 4
    assert (tmp_path / "final_model.pt").is_file()


def test_sigterm_before_training_stops_in_one_line(tmp_path, dataset, tokenizer_path):
    proc = start(tmp_path, paths(dataset, tokenizer_path, WARMUP_STEPS=1000))
    out, err = stop_at(proc, "model_params:")
    assert proc.returncode == 0 and err.strip().splitlines() == ["stopped: SIGTERM before training: nothing to save"], err


def test_progress_lines_in_a_long_phase(capsys, tokenizer_path):
    run = tg.Run(0, 1, torch.device("cpu"), None)
    run.last_line -= 31  # as if the last line was 31 s ago
    tg.evaluate_bpb(tg.HymbaGPT(tiny_hp(), reference_kernels()), tiny_data(tokenizer_path), tiny_hp(), run)
    assert capsys.readouterr().out.splitlines() == ["progress: scoring, at token 0 of 700"]


def test_the_settings_cost_under_a_kilobyte():
    state = tg.HymbaGPT(tiny_hp(), reference_kernels()).state_dict()
    hp = tg.Hyperparameters()
    settings = {k: getattr(hp, k) for k in tg.MODEL_SETTINGS + tg.SCORE_SETTINGS}
    record = dict(settings=settings, validation="62021846 tokens, CRC-32 0123abcd")
    with_record = len(tg.pack_artifact(state, 8, 22, record=record)[0])
    assert 0 < with_record - len(tg.pack_artifact(state, 8, 22)[0]) < 1000
