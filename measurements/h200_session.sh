#!/usr/bin/env bash
# One lease of an H200 machine (one GPU or several), end to end, as run for the figures in README.md (sixth session,
# 2026-11-29, on one H200; earlier sessions' jobs below; the two-GPU jobs are ready, not yet run).
#
# Needs, carried in .gpu/ (devtext_sp1024/ may come in .gpu_data/ instead): gpu/ (the mamba-ssm source archive and zstandard wheel from ../shared/gpu),
# devtext_sp1024/, tokenizers/, old_train_gpt.py (the script before the recipe changes, for the recipe A/B)
# and variants/NAME.py (earlier versions of train_gpt.py, run as /tmp/variants/NAME/train_gpt.py); candidate versions
# are written there from this train_gpt.py by measurements/variants/NAME.py, each with benchmark.py beside it.
#   bash measurements/h200_session.sh start    # detached: the jobs (a warm machine's last ones are stopped first)
#   bash measurements/h200_session.sh wait N   # wait up to N seconds, print progress, copy results to $OUT
# Every job of the table below starts at once, and waits for the jobs it names; mamba_build (in ONLY) builds mamba-ssm
# in the background, and every job that trains or benchmarks waits for it (after:mamba_build). A job names the GPUs
# it runs on: one ("0") runs with CUDA_VISIBLE_DEVICES set to it, several ("0,1") through torchrun, one process per
# GPU. Timing jobs wait for whatever else would share their GPU. Results gather in /tmp/res (a folder per job:
# console output, log, JSON; no weights). A file $RES/NAME/skip written before job NAME starts skips it.
# DRY_EXTRA="NUM_LAYERS=2 MODEL_DIM=32 ..." checks the driver itself on a CPU: no build, no benchmark or kernel
# timing (they need a GPU), and those settings appended to every run (measurements/dry_run.sh sets it up).
# ONLY="mamba_build eq_* gpu_tests" runs only the jobs whose names match; a job waits only for the jobs it names that
# ONLY selects.
set -u
REPO=$(pwd)
RES=/tmp/res
DATA=/tmp/devtext_sp1024
TOK=/tmp/tokenizers/fineweb_1024_bpe.model
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # the device's rule: no NVLink multicast

collect() {  # everything small under $RES, in one archive under $OUT
  [ -n "${OUT:-}" ] && tar czf "$OUT/results.tar.gz" -C /tmp --exclude='*.pt' --exclude='*.ptz' res 2>/dev/null
  tail -n 40 "$RES/driver.txt" 2>/dev/null
}

if [ "${1:-}" = "wait" ]; then
  for _ in $(seq 1 $(( ${2:-500} / 10 ))); do [ -f "$RES/done" ] && break; sleep 10; done
  collect; exit 0
fi
if [ "${1:-}" = "start" ]; then
  # a warm machine keeps the last call's driver, jobs and files: stop and remove them (their results went to $OUT)
  pkill -f "h200_session.sh run"; pkill -f "/tmp/repo/|/tmp/variants/|tests/test_gpu.py"; sleep 2
  rm -rf "$RES" /tmp/runs /tmp/repo /tmp/variants
  mkdir -p "$RES"; setsid nohup bash "$0" run > "$RES/driver.txt" 2>&1 < /dev/null &
  echo "started"; exit 0
fi

# --- run (detached) ---------------------------------------------------------------------------------
SECONDS=0
say() { echo "[$(printf '%4d' $SECONDS)s] $*"; }
selected() { [ -z "${ONLY:-}" ] && return 0; for g in $ONLY; do case "$1" in $g) return 0 ;; esac; done; return 1; }
cp -r "$REPO"/.gpu*/devtext_sp1024 "$REPO/.gpu/tokenizers" /tmp/  # the corpus from .gpu/ or .gpu_data/ (README)
cp -r "$REPO" /tmp/repo && rm -rf /tmp/repo/.gpu  # runs read the script from here; the checkout may be laid anew
cp "$REPO/.gpu/old_train_gpt.py" /tmp/old_train_gpt.py
for script in "$REPO"/.gpu/variants/*.py; do  # earlier versions of train_gpt.py
  mkdir -p "/tmp/variants/$(basename "$script" .py)" && cp "$script" "/tmp/variants/$(basename "$script" .py)/train_gpt.py"
  cp /tmp/repo/benchmark.py "/tmp/variants/$(basename "$script" .py)/"
done
for make in "$REPO"/measurements/variants/*.py; do  # candidates, written from this train_gpt.py
  name=$(basename "$make" .py); mkdir -p "/tmp/variants/$name"
  python3 "$make" /tmp/repo/train_gpt.py > "/tmp/variants/$name/train_gpt.py" && cp /tmp/repo/benchmark.py "/tmp/variants/$name/"
done
cd /tmp/repo
if [ -z "${DRY_EXTRA:-}" ]; then
python3 -m pip install -q --no-index --no-deps "$REPO"/.gpu/gpu/zstandard-*.whl
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv > "$RES/nvidia_smi.txt"
if selected mamba_build; then  # in the background: jobs that train name after:mamba_build
  say "building mamba-ssm (sm_90 only) in the background"
  mkdir -p /tmp/build "$RES/mamba_build" && tar xzf "$REPO"/.gpu/gpu/mamba_ssm-*.tar.gz -C /tmp/build --strip-components=1
  sed -i -E 's/cc_flag\.append\("arch=compute_(1[0-9]{2}|[0-8][0-9]),code=sm_[0-9]+"\)/cc_flag.pop()/' /tmp/build/setup.py
  (cd /tmp/build && MAMBA_FORCE_BUILD=TRUE MAX_JOBS=$(nproc) python3 -m pip install --no-build-isolation --no-deps --no-index . \
    > "$RES/mamba_build/output.txt" 2>&1; echo $? > "$RES/mamba_build/rc"
    say "mamba-ssm build exit $(cat "$RES/mamba_build/rc")") &
fi
elif selected mamba_build; then
  mkdir -p "$RES/mamba_build" && echo "dry run: no build" > "$RES/mamba_build/rc"
fi

# SCAN_BACKEND=mamba_ssm: a run fails at once where mamba-ssm did not build, rather than train on the reference scan
# (as the sixth session's first row jobs did on a fresh machine, out of memory six at a time)
COMMON="DATA_PATH=$DATA TOKENIZER_PATH=$TOK TRAIN_BATCH_TOKENS=65536 GRAD_ACCUM_STEPS=1 MAX_WALLCLOCK_SECONDS=0 SCAN_BACKEND=mamba_ssm"
AB="ITERATIONS=285 WARMDOWN_ITERS=285 EMA_DECAY=0.95 EMA_EVERY=1 TTT_ENABLED=0 ZSTD_LEVEL=3 TRAIN_LOG_EVERY=50"
# multi-GPU equality: one global batch of 2 x 65,536 tokens, as 1 GPU x 2 micro-steps or 2 GPUs x 1 (README)
EQ="TRAIN_BATCH_TOKENS=131072 ITERATIONS=200 WARMDOWN_ITERS=200 EMA_DECAY=0.95 EMA_EVERY=1 ZSTD_LEVEL=3 TRAIN_LOG_EVERY=10 SEED=7"
# scaling: the record's per-GPU shape (2 x 32,768 tokens, one micro-step) on 1 GPU, then on 2
SCALE="ITERATIONS=300 WARMDOWN_ITERS=300 TTT_ENABLED=0 ZSTD_LEVEL=3"
BENCH="benchmark.py --warmup 3 --iters 10 --train-only --json benchmark.json"
SG=/tmp/variants/single_gemm_mamba/train_gpt.py
MAMBA=/tmp/variants/mamba_ssm_e3225d5  # the script before the Triton scan (the fifth session's end), and benchmark.py
BEFORE=/tmp/variants/0_before_session4/train_gpt.py  # the script at the start of the fourth session (919b703)
JOBS=(
  # name | GPUs | command, run in /tmp/runs/NAME; scripts given relative to the repository. It may begin with "after:A,B"
  # (wait for those jobs to end) or "trained:A,B" (for their training to end: their step times are then their own)
  # --- eleventh session (one H200), two calls on one warm machine, FlashAttention-4 unpacked as below: (1) carry .gpu and
  # .fa, ONLY="mamba_build s12_bench s12_combo": this script's step and profile, then Inductor's combo kernels (independent
  # small kernels launched as one); (2) carry .gpu and .gpu_data, ONLY="s12_final1000 s12_gpu_tests": the end-to-end run
  # for train.log, alone on the GPU, then the GPU tests ---
  "s12_bench|0|after:mamba_build $BENCH --profile --profile-rows 60"
  "s12_combo|0|after:s12_bench $BENCH --inductor combo_kernels=True"
  "s12_final1000|0|train_gpt.py ITERATIONS=1000 WARMDOWN_ITERS=1750 TORCH_LOGS=recompiles"
  "s12_gpu_tests|0|after:s12_final1000 pytest"
  # --- tenth session's plan for the next lease (two H200s; on one, give s11_autotune GPU 0 and after:s11_gpu_tests), calls on one warm
  # machine, FlashAttention-4 unpacked as below: (1) carry .gpu and .fa, ONLY="mamba_build s11_bench s11_gpu_tests
  # s11_autotune": this script's step and profile, its GPU tests, and beside them Inductor's max-autotune with the rest
  # of the call to compile in (unfinished within 3 minutes in the ninth session); (2) carry .gpu and .gpu_data,
  # ONLY="s11_final1000": this script's end-to-end run, for train.log (alone: nothing beside it on the other GPU, since
  # the tenth session's ran slower beside other runs); (3) ONLY="s11_eq_2gpu": the equality's two-GPU run again, the
  # clock now started once every rank has warmed up, so its first 10 steps should take about a second, not 222 s ---
  "s11_bench|0|after:mamba_build $BENCH --profile --profile-rows 60"
  "s11_gpu_tests|0|after:s11_bench pytest"
  "s11_autotune|1|after:mamba_build $BENCH --compile-mode max-autotune-no-cudagraphs"
  "s11_final1000|0|train_gpt.py ITERATIONS=1000 WARMDOWN_ITERS=1750 TORCH_LOGS=recompiles"
  "s11_eq_2gpu|0,1|train_gpt.py $EQ GRAD_ACCUM_STEPS=1 TTT_ENABLED=1 TORCH_LOGS=recompiles"
  # --- tenth session (two H200s, nvidia-h200-x2), run at ebede7c on branch adopt-triton-conv, whose script has the
  # Triton convolution (CONV_BACKEND=triton; not on main, so check that commit out to run the s10a jobs again) and one
  # graph under DDP (optimize_ddp off), FlashAttention-4 unpacked into /tmp/site as for the ninth. Three calls on one
  # warm machine, each job set started once the last has ended (`wait`, then `start`). (a) carry .gpu and .fa,
  # ONLY="mamba_build s10a_*": the convolution alone beside the probe's designs (during the build), the step with it
  # (GPU 0, profiled) and with CONV_BACKEND=reference (GPU 1, side by side), the GPU tests; then the step under DDP on
  # both GPUs, one graph (the script) and split at the buckets (variant ddp_buckets). (b) carry .gpu and .gpu_data,
  # ONLY="s10b_*": that script's end-to-end run (GPU 0; not train.log: the convolution gained nothing, README), and two
  # one-GPU runs of the equality's global batch (GPU 1), whose difference is the run-to-run noise. (c) ONLY="s10c_*":
  # the equality's two-GPU run, with TTT and recompiles logged ---
  "s10a_conv_configs|1|measurements/conv_configs.py --json conv_configs.json"
  "s10a_bench|0|after:mamba_build $BENCH --profile --profile-rows 60"
  "s10a_bench_ref|1|after:mamba_build,s10a_conv_configs $BENCH CONV_BACKEND=reference"
  "s10a_gpu_tests|1|after:s10a_bench_ref pytest"
  "s10a_bench_2gpu|0,1|after:s10a_bench,s10a_gpu_tests $BENCH --profile --profile-rows 60"
  "s10a_bench_2gpu_buckets|0,1|after:s10a_bench_2gpu /tmp/variants/ddp_buckets/$BENCH --profile --profile-rows 60"
  "s10b_final1000|0|train_gpt.py ITERATIONS=1000 WARMDOWN_ITERS=1750 TORCH_LOGS=recompiles"
  "s10b_eq_1gpu_a|1|train_gpt.py $EQ GRAD_ACCUM_STEPS=2 TTT_ENABLED=0"
  "s10b_eq_1gpu_b|1|after:s10b_eq_1gpu_a train_gpt.py $EQ GRAD_ACCUM_STEPS=2 TTT_ENABLED=0"
  "s10c_eq_2gpu|0,1|train_gpt.py $EQ GRAD_ACCUM_STEPS=1 TTT_ENABLED=1 TORCH_LOGS=recompiles"
  # --- ninth session (two H200s, nvidia-h200-x2; FlashAttention-4's packages unpacked into /tmp/site first, as
  # measurements/pack_flash_attention.sh says). Call 1 (carry .gpu, .fa; ONLY="mamba_build s9_*"): on GPU 0 this script
  # (FlashAttention-4) with its profile, then CUDA graphs, then FlexAttention for FlashAttention-4's own gain; on GPU 1 the
  # GPU tests, the two-pass Triton convolution's own row, and Inductor's Triton matmul templates (max-autotune, no CUDA
  # graphs), whose compile may not finish. Call 2 (carry .gpu, .gpu_data; ONLY="final1000 gpu_tests10 eq_1gpu_a"): the
  # end-to-end run that becomes train.log on GPU 0, the one-GPU side of the equality on GPU 1. Call 3 (ONLY="eq_2gpu
  # bench_2gpu"): the two-GPU side, and the step under DDP on two GPUs ---
  "s9_bench_base|0|after:mamba_build $BENCH --profile --profile-rows 60"
  "s9_bench_cg|0|after:s9_bench_base $BENCH --compile-mode reduce-overhead"
  "s9_bench_flex|0|after:s9_bench_cg $BENCH ATTN_BACKEND=flex"
  "s9_gpu_tests|1|after:mamba_build pytest"
  "s9_bench_conv|1|after:s9_gpu_tests /tmp/variants/triton_conv/$BENCH"
  "s9_bench_autotune|1|after:s9_bench_conv $BENCH --compile-mode max-autotune-no-cudagraphs"
  # --- ready for the next lease (one H200; ONLY="mamba_build conv_configs bench_base8 bench_triton_conv bench_split_xz
  # bench_scan_grad bench_cudagraphs bench_cdt"): the Triton convolution's two designs alone (needs no mamba-ssm: runs
  # during the build), then the step of this script and of three candidates (measurements/variants/), CUDA graphs for
  # the model (the third session's -0.71 ms was before the Flex tile sizes; never timed with them), then Inductor's
  # coordinate descent tuning, whose compile ran past 340 s in the seventh session (bench_cdt7, unfinished) ---
  # --- eighth session (one H200): FlashAttention-4 (flash-attn-4's CuTe kernels; then measurements/flash_attention.py, the
  # variant flash_attention, both since folded into train_gpt.py), its packages carried as one archive and unpacked into /tmp/site (README). Call 2: alone at
  # one layer's shape, then in the step against FlexAttention, then the GPU tests (then run with the operators inside
  # train_gpt.py, as the variant writes them). Call 3: the variant again, the three variants that gained together, the
  # GPU tests, and CUDA graphs with it. (Call 1 was bench_base8, bench_split_xz, bench_scan_grad and conv_configs.) ---
  "flash_probe|0|measurements/attention_timing.py --json attention_timing.json"
  "bench_flex|0|after:mamba_build,flash_probe $BENCH ATTN_BACKEND=flex"
  "bench_flash|0|after:bench_flex /tmp/variants/flash_attention/$BENCH ATTN_BACKEND=flash --profile --profile-rows 60"
  "gpu_tests8|0|after:bench_flash pytest"
  "bench_flash2|0|after:mamba_build /tmp/variants/flash_attention/$BENCH"
  "bench_bundle|0|after:bench_flash2 /tmp/variants/flash_conv_scan_grad/$BENCH --profile --profile-rows 60"
  "gpu_tests9|0|after:bench_bundle pytest"
  "bench_flash_cg|0|after:mamba_build,gpu_tests9 $BENCH --compile-mode reduce-overhead"  # the variant is train_gpt.py now
  # --- ready for the next lease, once FlashAttention-4 is in train_gpt.py: two calls on one warm machine, since its
  # packages (.fa/, 55 MB) and the corpus (36 MB) cannot travel together. (1) carry [".gpu", ".fa"], unpack and export
  # PYTHONPATH as measurements/pack_flash_attention.sh says, ONLY="mamba_build bench_flash_cg", wait 400; (2) within 30 s,
  # carry [".gpu", ".gpu_data"] (devtext_sp1024 in .gpu_data/), the same PYTHONPATH, ONLY="final1000 gpu_tests10":
  # its logs/final1000.txt and .json become train.log and submission.json ---
  "final1000|0|after:mamba_build train_gpt.py ITERATIONS=1000 WARMDOWN_ITERS=1750 TORCH_LOGS=recompiles"
  "gpu_tests10|0|after:final1000 pytest"
  "bench_base8|0|after:mamba_build,conv_configs $BENCH"
  "bench_triton_conv|0|after:mamba_build,bench_base8,gpu_tests8 /tmp/variants/triton_conv/$BENCH --profile --profile-rows 60"
  "bench_split_xz|0|after:bench_base8,bench_triton_conv /tmp/variants/split_xz/$BENCH"
  "bench_scan_grad|0|after:bench_split_xz /tmp/variants/scan_grad_as_is/$BENCH"
  "bench_cudagraphs|0|after:bench_scan_grad $BENCH --compile-mode reduce-overhead"
  "bench_cdt|0|after:bench_cudagraphs $BENCH --inductor coordinate_descent_tuning=True"
  # --- seventh session (one H200), four calls: (1) mamba-ssm's scan with B and C in groups (its backward's atomics:
  # no gain) and the step's kernels in full; (2) the causal convolution as one Triton kernel, then in train_gpt.py
  # (c6ea8e2; since measurements/triton_conv.py, its "recompute" design, CONV_BLOCK then BD=8, BL=512, 4 warps) against
  # the script before it (e3225d5 = this train_gpt.py), where bench_conv failed on its fake's strides; (3) conv_configs
  # and bench_conv again, fixed (bench_cdt7 and bench_autotune7 started at once: they named gpu_tests7, not selected,
  # and failed without mamba-ssm); (4) bench_cdt7 alone, its compile unfinished after 340 s ---
  "scan_groups|0|after:mamba_build measurements/scan_groups.py --json scan_groups.json"
  "bench_profile|0|after:scan_groups $BENCH --profile --profile-rows 200"
  "conv_configs|0|measurements/conv_configs.py --json conv_configs.json"
  "bench_base|0|after:mamba_build,conv_configs $MAMBA/$BENCH"
  "bench_conv|0|after:mamba_build,bench_base $BENCH --profile --profile-rows 200"
  "gpu_tests7|0|after:bench_conv pytest"
  "bench_cdt7|0|after:mamba_build $BENCH --inductor coordinate_descent_tuning=True"
  # --- sixth session (one H200): the Triton scan (then in train_gpt.py, commit b7214cf; since measurements/triton_scan.py)
  # against mamba-ssm's: its launch settings, its passes, the step, the GPU tests ---
  "scan_configs|0|measurements/scan_configs.py --json scan_configs.json"
  "bench_triton|0|after:scan_configs $BENCH --profile"
  "bench_mamba_ssm|0|after:bench_triton,mamba_build $MAMBA/$BENCH"
  "gpu_tests|0|after:bench_triton pytest"
  "scan_designs|0|measurements/scan_designs.py"
  # --- fifth session (one H200: the two-GPU kind was no longer lent when asked), run at e028bd3, whose
  # measurements/variants/single_gemm_mamba.py wrote $SG (train_gpt.py since); loop_late_read_e31acc3 was skipped ---
  "bench|0|$BENCH --profile"
  "bench_text|0|after:bench $BENCH --tokens-from $DATA/fineweb_train_000000.bin"
  "bench_single_gemm|0|after:bench_text /tmp/variants/single_gemm_mamba/$BENCH"
  "bench_no_qat_forward|0|after:bench_single_gemm /tmp/variants/no_qat_forward/$BENCH"
  "final1000_ttt|0|after:bench_no_qat_forward train_gpt.py ITERATIONS=1000 WARMDOWN_ITERS=1750 TORCH_LOGS=recompiles"
  "final1000_single_gemm|0|after:final1000_ttt $SG ITERATIONS=1000 WARMDOWN_ITERS=1750 TORCH_LOGS=recompiles"
  "loop_late_read_e31acc3|0|after:final1000_single_gemm /tmp/variants/late_read_e31acc3/train_gpt.py ITERATIONS=1000 WARMDOWN_ITERS=1750 TTT_ENABLED=0"
  "row_all_seed1337|0|trained:loop_late_read_e31acc3 measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337 OLD_ROWS=ortho,scales,dt,smear,fp32"
  "row_none_seed1337|0|trained:loop_late_read_e31acc3 measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337"
  "row_fp32_seed1337|0|trained:loop_late_read_e31acc3 measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337 OLD_ROWS=fp32"
  # PR #599's init rows one at a time at 285 steps, three side by side (the sixth session's last call; ONLY="mamba_build
  # row_base_seed1337 row_dt_seed1337 row_ortho_seed1337")
  "row_base_seed1337|0|after:mamba_build measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337"  # the same lease's reference
  "row_dt_seed1337|0|after:mamba_build measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337 OLD_ROWS=dt"
  "row_ortho_seed1337|0|after:mamba_build measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337 OLD_ROWS=ortho"
  # --- ready since the sixth session, one chain, any part of it (ONLY="mamba_build bench_long bench_autotune
  # row_scales_* row_smear_* init1000"; Inductor's coordinate descent tuning is bench_cdt above):
  # benchmarks alone: 500 steps (the loop's extra 2 ms: the GPU's clocks under a sustained load?), and Triton matmul
  # templates that can take the element-wise work into their epilogues (its compile may take many minutes); then the two
  # init rows left, and all four at 1,000 steps (against the fifth session's final1000_single_gemm: the same script and
  # settings), side by side ---
  "bench_long|0|after:mamba_build benchmark.py --warmup 3 --iters 500 --train-only --json benchmark.json"
  "bench_autotune|0|after:bench_long $BENCH --compile-mode max-autotune-no-cudagraphs"
  "row_scales_seed1337|0|after:mamba_build,bench_autotune measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337 OLD_ROWS=scales"
  "row_smear_seed1337|0|after:mamba_build,bench_autotune measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337 OLD_ROWS=smear"
  "init1000|0|after:mamba_build,bench_autotune measurements/recipe_rows.py ITERATIONS=1000 WARMDOWN_ITERS=1750 TTT_ENABLED=0 OLD_ROWS=ortho,scales,dt,smear"
  "flex_configs|0|measurements/flex_configs.py --json flex_configs.json"  # FlexAttention alone: needs no mamba-ssm
  # --- ready for two GPUs (issue 13; ONLY="mamba_build eq_* scale_* bench_2gpu"): equality, scaling, the communication's profile ---
  "eq_1gpu_a|1|after:mamba_build train_gpt.py $EQ GRAD_ACCUM_STEPS=2 TTT_ENABLED=0"
  "eq_1gpu_b|0|after:mamba_build train_gpt.py $EQ GRAD_ACCUM_STEPS=2 TTT_ENABLED=0"
  "eq_2gpu|0,1|after:eq_1gpu_a,eq_1gpu_b train_gpt.py $EQ GRAD_ACCUM_STEPS=1 TTT_ENABLED=1"
  "scale_1gpu|0|after:eq_2gpu train_gpt.py $SCALE"
  "scale_2gpu|0,1|after:scale_1gpu train_gpt.py $SCALE TRAIN_BATCH_TOKENS=131072"
  "bench_2gpu|0,1|after:eq_2gpu,scale_2gpu $BENCH --profile"  # the ninth session ran it beside eq_2gpu: it named only scale_2gpu
  # --- fourth session (one GPU) ---
  "final1000_before|0|trained:final1000_ttt $BEFORE ITERATIONS=1000 WARMDOWN_ITERS=1750"
  "proxy4000_ttt|0|trained:final1000_ttt train_gpt.py ITERATIONS=4000 TORCH_LOGS=recompiles"
  # TTT's learning rate at this scale, on the end-to-end run's artifact (its own TTT: the default, 0.0002)
  "ttt_lr0.0005|0|after:final1000_ttt train_gpt.py EVAL_ONLY=1 ARTIFACT=/tmp/runs/final1000_ttt/final_model.int8.ptz TTT_LR=0.0005"
  "ttt_lr0.0001|0|after:final1000_ttt train_gpt.py EVAL_ONLY=1 ARTIFACT=/tmp/runs/final1000_ttt/final_model.int8.ptz TTT_LR=0.0001"
  # the recipe A/B of the third session again, with the bigram table's learning rate reverted (919b703), and this script
  "ab_before_seed1337|0|trained:final1000_ttt $BEFORE $AB QAT_START_FRAC=1 SEED=1337"
  "ab_before_seed42|0|trained:final1000_ttt $BEFORE $AB QAT_START_FRAC=1 SEED=42"
  "ab_new_seed1337|0|trained:final1000_ttt train_gpt.py $AB QAT_START_FRAC=1 SEED=1337"
  # --- third session: the recipe A/B against the script before PR #599's rows (0d2e1ed); export variants ---
  "ab_old_seed1337|0|/tmp/old_train_gpt.py $AB SEED=1337"
  "ab_old_seed42|0|/tmp/old_train_gpt.py $AB SEED=42"
  "export_variants|0|after:final1000_ttt measurements/export_variants.py /tmp/runs/final1000_ttt/final_model.pt TTT_ENABLED=0"
  "ttt_lr0.002|0|after:final1000_ttt train_gpt.py EVAL_ONLY=1 ARTIFACT=/tmp/runs/final1000_ttt/final_model.int8.ptz TTT_LR=0.002"
  # --- second session (commit bd990b6): the record-length proxies ---
  "proxy4000_qat|0|train_gpt.py ITERATIONS=4000 TORCH_LOGS=recompiles"
  "proxy4000_noqat|0|train_gpt.py ITERATIONS=4000 QAT_START_FRAC=1 TTT_ENABLED=0"
  "proxy1000_qat|0|train_gpt.py ITERATIONS=1000 WARMDOWN_ITERS=1750 TTT_ENABLED=0"
  "proxy1000_noqat|0|train_gpt.py ITERATIONS=1000 WARMDOWN_ITERS=1750 QAT_START_FRAC=1 TTT_ENABLED=0"
)
ended() {  # ended A,B (after:) or trained A,B (trained:): whether each of those jobs has got that far
  local name
  for name in ${2//,/ }; do
    selected "$name" || continue  # not asked for in ONLY: nothing to wait for
    [ -f "$RES/$name/rc" ] && continue
    [ "$1" = trained ] && grep -q "^training done" "$RES/$name/output.txt" 2>/dev/null && continue
    return 1
  done
}
for job in "${JOBS[@]}"; do
  IFS='|' read -r name gpus command <<< "$job"
  selected "$name" || continue
  mkdir -p "$RES/$name" "/tmp/runs/$name"
  (
    set -- $command
    case "$1" in after:* | trained:*)
      while ! ended "${1%%:*}" "${1#*:}"; do sleep 2; done; shift ;;
    esac
    if [ -f "$RES/$name/skip" ]; then  # written by hand while the driver runs: the job is no longer wanted
      say "skip $name: $(cat "$RES/$name/skip")"; echo skipped > "$RES/$name/rc"; exit 0
    fi
    say "start $name (GPU $gpus)"
    cd "/tmp/runs/$name"
    export CUDA_VISIBLE_DEVICES=$gpus
    if [ "$1" = pytest ]; then
      (cd /tmp/repo && python3 -m pytest -v -rs tests/test_gpu.py) > "$RES/$name/output.txt" 2>&1
    else
      script=$1; shift; args=(); settings=()
      case "$script" in /*) ;; *) script=/tmp/repo/$script ;; esac
      for a in "$@"; do  # NAME=VALUE with an upper-case NAME is a setting; anything else (--inductor a=b) an argument
        if [[ "$a" =~ ^[A-Z_][A-Z0-9_]*= ]]; then settings+=("$a"); else args+=("$a"); fi
      done
      ids=(${gpus//,/ }); launch=(python3)
      [ ${#ids[@]} -gt 1 ] && launch=(torchrun --standalone --nproc_per_node=${#ids[@]})
      if [ -n "${DRY_EXTRA:-}" ] && [[ "${script##*/}" = benchmark.py || "${script##*/}" = *_configs.py || "${script##*/}" = scan_* ]]; then
        echo "dry run: no benchmark on a CPU" > "$RES/$name/output.txt"
      else
        env $COMMON "${settings[@]}" ${DRY_EXTRA:-} ${DRY_EXTRA:+SCAN_BACKEND=auto} RUN_ID="$name" PYTHONUNBUFFERED=1 \
          "${launch[@]}" "$script" "${args[@]}" > "$RES/$name/output.txt" 2>&1
      fi
    fi
    rc=$?; echo $rc > "$RES/$name/rc"
    cp -r logs "$RES/$name/" 2>/dev/null; cp ./*.json "$RES/$name/" 2>/dev/null
    say "done $name exit $rc"
  ) &
done
wait
say "all done"
touch "$RES/done"
