"""The tools' own logic on CPU: benchmark.py's arithmetic (its timings need a GPU), side_by_side.py's
table, small_split.py's split."""
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
