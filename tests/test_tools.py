"""The tools' own logic on CPU: benchmark.py's arithmetic (its timings need a GPU), side_by_side.py's
table, small_split.py's split, ttt_sweep.py's projection and scores, recipe_rows.py's rows and averages, scan_timing.py's inputs."""
import pytest

import benchmark


def test_communication_overlap_counts_only_the_time_beside_compute():
    kernels = [(0, 10, "gemm"), (5, 20, "triton_fused"), (30, 40, "gemm"),  # compute: 0-20 and 30-40
               (15, 35, "ncclDevKernel_AllReduce_Sum_f32(...)"),  # 5 beside compute, 10 alone, 5 beside
               (50, 60, "ncclDevKernel_AllReduce_Sum_bf16(...)")]  # alone
    line = benchmark.communication_overlap(kernels, steps=1)
    assert "2 NCCL kernels per step, 0.03 ms per step" in line
    assert "0.01 ms ran beside compute (hidden) and 0.02 ms did not (exposed)" in line
    assert "ncclDevKernel_AllReduce_Sum_bf16, ncclDevKernel_AllReduce_Sum_f32" in line


@pytest.mark.parametrize("steps", [1, 2])
def test_communication_overlap_is_per_step(steps):
    kernels = [(0, 1000, "gemm"), (0, 2000, "nccl_allreduce")]
    line = benchmark.communication_overlap(kernels, steps=steps)
    assert f"{1.0 / steps:.2f} ms ran beside compute" in line


def test_drift_is_the_last_tenth_against_the_first():
    assert benchmark.drift_ms([10.0] * 49) is None  # too few steps to say
    times = [10.0] * 10 + [11.0] * 80 + [12.5] * 10
    assert benchmark.drift_ms(times) == 2.5


def test_inductor_settings_parse_literals_and_refuse_unknown_names():
    assert benchmark.inductor_settings(["coordinate_descent_tuning=True", "max_autotune_gemm_backends=TRITON"]) == {
        "coordinate_descent_tuning": True, "max_autotune_gemm_backends": "TRITON"}
    for bad in ("coordinate_descent_tunning=True", "coordinate_descent_tuning"):
        with pytest.raises(SystemExit):
            benchmark.inductor_settings([bad])


def test_side_by_side_reads_a_runs_final_scores(tiny_run):
    """tools/side_by_side.py's table: the scores a run's log ends with, from its last lines."""
    import side_by_side
    cwd, result = tiny_run
    scores = side_by_side.final_scores(cwd / "logs/tiny.txt")
    assert scores["steps"] == 12 and "stopped" not in scores
    for column, (prefix, field) in side_by_side.SCORES.items():
        expected = [line for line in result.stdout.splitlines() if line.startswith(prefix + " ")][-1]
        assert f"{field}:" in expected and abs(scores[column] - float(expected.split(f"{field}:")[1].split()[0])) < 1e-9


def test_small_split_keeps_the_first_train_shard_and_a_short_validation_stream(dataset, tmp_path):
    import subprocess
    import sys
    import numpy as np
    from conftest import ROOT
    result = subprocess.run([sys.executable, str(ROOT / "tools/small_split.py"), str(dataset), str(tmp_path / "small"),
                             "--val-tokens", "500"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "small").iterdir()) == ["fineweb_train_000000.bin",
                                                                      "fineweb_val_000000.bin"]
    import train_gpt as tg
    val = tg.load_shard(tmp_path / "small/fineweb_val_000000.bin", 320)
    original = tg.load_shard(dataset / "fineweb_val_000000.bin", 320)
    assert np.array_equal(val, original[:500])
    assert (tmp_path / "small/fineweb_train_000000.bin").read_bytes() == (dataset / "fineweb_train_000000.bin").read_bytes()


def test_ttt_sweep_projection_counts_a_ranks_windows_per_chunk():
    import math
    import ttt_sweep
    # here: 4 windows of 64 tokens scored in 4 s, TTT in 8 s, so 1 s and 2 s a window
    fineweb_windows = math.ceil((ttt_sweep.FINEWEB_VAL_TOKENS - 1) / 64)
    scoring = math.ceil(fineweb_windows / 8) * 1.0
    # chunks of 2 windows: each rank handles at most one window a chunk
    chunks = math.ceil((ttt_sweep.FINEWEB_VAL_TOKENS - 1) / 128)
    assert ttt_sweep.projected_seconds(4.0, 8.0, 257, 128, 64) == pytest.approx(scoring + chunks * 2.0)
    # chunks of 16 windows: two a rank
    chunks = math.ceil((ttt_sweep.FINEWEB_VAL_TOKENS - 1) / 1024)
    assert ttt_sweep.projected_seconds(4.0, 8.0, 257, 1024, 64) == pytest.approx(scoring + chunks * 2 * 2.0)


def test_ttt_sweep_scores_the_runs_own_setting_as_the_run_did(tiny_run, dataset, tokenizer_path):
    """One setting is the run's own TTT (TTT_LR's default, the tiny configuration's epochs and chunk): the same score
    as the run's; another differs; every setting lands in logs/RUN_ID.json with its projection."""
    import json
    import os
    import subprocess
    import sys
    from conftest import ROOT, TINY, final_line
    cwd, result = tiny_run
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TINY, DATA_PATH=str(dataset), TOKENIZER_PATH=str(tokenizer_path), RUN_ID="sweep")
    own = f"0.0001:{TINY['TTT_EPOCHS']}:{TINY['TTT_CHUNK_TOKENS']}"
    sweep = subprocess.run([sys.executable, str(ROOT / "tools/ttt_sweep.py"), own, "0.01:1:512"], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=240)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    summary = json.loads((cwd / "logs/sweep.json").read_text())
    assert summary["roundtrip_val_bpb"] == pytest.approx(
        float(final_line(result.stdout, "final_int8_zstd_roundtrip_exact")["val_bpb"]), abs=1e-8)
    first, second = summary["sweep"]
    assert (first["lr"], first["epochs"], first["chunk"]) == (0.0001, 2, 1024)
    assert first["val_bpb"] == pytest.approx(float(final_line(result.stdout, "legal_ttt_exact")["val_bpb"]), abs=1e-8)
    assert second["val_bpb"] != first["val_bpb"] and second["projected_s"] > 0
    bad = subprocess.run([sys.executable, str(ROOT / "tools/ttt_sweep.py"), "0.01:one:512"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "is not LR:EPOCHS:CHUNK_TOKENS" in bad.stderr


def test_recipe_rows_switches_the_init_rows_to_pr599s(monkeypatch):
    import recipe_rows
    import torch
    from conftest import reference_kernels, tiny_hp
    monkeypatch.setattr(recipe_rows, "ROWS", {"ortho", "scales", "dt", "smear"})
    torch.manual_seed(0)
    model = recipe_rows.build(tiny_hp(NUM_LAYERS=4), reference_kernels(), torch.device("cpu"))
    for layer, block in enumerate(model.blocks):
        assert torch.allclose(block.mixer_scale, torch.full_like(block.mixer_scale, (layer + 1) ** -0.5))
        assert torch.equal(block.mlp_scale, block.mixer_scale)
    q = model.blocks[1].mixer.q_proj.weight
    torch.testing.assert_close(q @ q.T, torch.eye(q.size(0)), atol=1e-5, rtol=0)  # orthogonal, gain 1
    assert not model.blocks[0].mixer.out_proj.weight.any() and not model.lm_head.weight.any()  # still zero
    bias, bound = model.blocks[0].mixer.dt_proj.bias, model.blocks[0].mixer.dt_rank ** -0.5
    assert bias.abs().max() <= bound and bias.abs().max() > bound / 2
    assert torch.sigmoid(model.smear.gate).max().item() == pytest.approx(0.0474, abs=1e-3)


def test_recipe_rows_scores_other_averages_as_the_script_scores_its_own(dataset, tokenizer_path, tmp_path):
    """AVERAGES=0 is the last step's weights and 0.6 the tiny configuration's own export: their lines repeat the
    script's own scores; the EMA's differs."""
    import os
    import subprocess
    import sys
    from conftest import ROOT, TINY, final_line
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TINY, DATA_PATH=str(dataset), TOKENIZER_PATH=str(tokenizer_path), RUN_ID="rows", TTT_ENABLED="0",
               VAL_LOSS_EVERY="0", AVERAGES="0,0.6,ema")
    result = subprocess.run([sys.executable, str(ROOT / "tools/recipe_rows.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    averages = {line.split()[1]: dict(w.split(":") for w in line.split()[2:])
                for line in result.stdout.splitlines() if line.startswith("average ")}
    assert averages["0"]["samples"] == "0" and averages["0.6"]["samples"] == "2"
    last = float(final_line(result.stdout, "final_last_step_prequant")["val_bpb"])
    exported = float(final_line(result.stdout, "final_prequant")["val_bpb"])
    assert float(averages["0"]["prequant_bpb"]) == pytest.approx(last, abs=6e-5)
    assert float(averages["0.6"]["prequant_bpb"]) == pytest.approx(exported, abs=6e-5)
    assert float(averages["0.6"]["roundtrip_bpb"]) == pytest.approx(
        float(final_line(result.stdout, "final_int8_zstd_roundtrip_exact")["val_bpb"]), abs=1e-5)
    assert abs(float(averages["ema"]["prequant_bpb"]) - exported) > 1e-3
    bad = subprocess.run([sys.executable, str(ROOT / "tools/recipe_rows.py")], cwd=tmp_path,
                         env={**env, "SWITCH_ROWS": "orth"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown rows ['orth']" in bad.stderr


def test_scan_timing_builds_the_models_layout():
    """scan_timing.py's inputs are as the model passes them to the scan: u and z slices of one (d, b, l) tensor, B and
    C slices of another, delta a (b, d, l) view of (d, b, l) storage (its timings need a GPU)."""
    import scan_timing
    inputs = scan_timing.model_layout_inputs(batch=2, dim=16, state=4, length=64, device="cpu")
    assert inputs["u"].shape == inputs["z"].shape == inputs["delta"].shape == (2, 16, 64)
    assert inputs["B"].shape == inputs["C"].shape == (2, 4, 64)
    assert inputs["u"].stride() == inputs["z"].stride() == inputs["delta"].stride() == (64, 2 * 64, 1)
    assert inputs["z"].storage_offset() == 16 * 2 * 64
    assert inputs["B"].storage_offset() == 32 * 2 * 64 and inputs["C"].storage_offset() == 36 * 2 * 64
    assert inputs["A"].shape == (16, 4) and bool((inputs["A"] < 0).all())
