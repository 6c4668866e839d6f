#!/usr/bin/env bash
# One H200 lease, end to end, as run for the figures in README.md (fourth session, 2026-11-29; earlier sessions' jobs below).
#
# Needs, carried in .gpu/: gpu/ (the mamba-ssm source archive and zstandard wheel from ../shared/gpu),
# devtext_sp1024/, tokenizers/, old_train_gpt.py (the script before the recipe changes, for the recipe A/B)
# and variants/NAME.py (earlier versions of train_gpt.py, whose training step is benchmarked as benchmark_NAME); candidate
# versions are made from this train_gpt.py by measurements/variants/NAME.py and benchmarked the same way.
#   bash measurements/h200_session.sh start    # detached: build, benchmarks, GPU tests, training runs
#   bash measurements/h200_session.sh wait N   # wait up to N seconds, print progress, copy results to $OUT
# Order: mamba-ssm builds while FlexAttention's kernel options are timed (that needs no mamba-ssm); then the
# benchmarks, alone on the GPU (this script, each variant, this one with the best Flex options); then the
# jobs below, four at a time. Results gather in /tmp/res (one folder per run: console output and log, no weights).
# DRY_EXTRA="NUM_LAYERS=2 MODEL_DIM=32 ..." checks the driver itself on a CPU: no build, no benchmark, and those
# settings appended to every run. ONLY="ab_* gpu_tests" runs only the jobs whose names match (and the benchmarks
# or flex_configs only if those names match); a job that waits for another ("after:") needs that one in the list.
set -u
REPO=$(pwd)
RES=/tmp/res
DATA=/tmp/devtext_sp1024
TOK=/tmp/tokenizers/fineweb_1024_bpe.model
MAX_PARALLEL=${MAX_PARALLEL:-4}  # runs side by side on the one GPU (about 19 GiB each, 37 with TTT at 4 sequences)

collect() {  # everything small under $RES, in one archive under $OUT
  [ -n "${OUT:-}" ] && tar czf "$OUT/results.tar.gz" -C /tmp --exclude='*.pt' --exclude='*.ptz' res 2>/dev/null
  tail -n 40 "$RES/driver.txt" 2>/dev/null
}

if [ "${1:-}" = "wait" ]; then
  for _ in $(seq 1 $(( ${2:-500} / 10 ))); do [ -f "$RES/done" ] && break; sleep 10; done
  collect; exit 0
fi
if [ "${1:-}" = "start" ]; then
  mkdir -p "$RES"; setsid nohup bash "$0" run > "$RES/driver.txt" 2>&1 < /dev/null &
  echo "started"; exit 0
fi

# --- run (detached) ---------------------------------------------------------------------------------
SECONDS=0
say() { echo "[$(printf '%4d' $SECONDS)s] $*"; }
selected() { [ -z "${ONLY:-}" ] && return 0; for g in $ONLY; do case "$1" in $g) return 0 ;; esac; done; return 1; }
cp -r "$REPO/.gpu/devtext_sp1024" "$REPO/.gpu/tokenizers" /tmp/
cp -r "$REPO" /tmp/repo && rm -rf /tmp/repo/.gpu  # runs read the script from here; the checkout may be laid anew
cp "$REPO/.gpu/old_train_gpt.py" /tmp/old_train_gpt.py
for script in "$REPO"/.gpu/variants/*.py; do  # earlier versions of train_gpt.py, benchmarked beside this one
  mkdir -p "/tmp/variants/$(basename "$script" .py)" && cp "$script" "/tmp/variants/$(basename "$script" .py)/train_gpt.py"
  cp /tmp/repo/benchmark.py "/tmp/variants/$(basename "$script" .py)/"
done
for make in "$REPO"/measurements/variants/*.py; do  # candidates, written from this train_gpt.py, benchmarked beside it
  name=$(basename "$make" .py); mkdir -p "/tmp/variants/$name"
  python3 "$make" /tmp/repo/train_gpt.py > "/tmp/variants/$name/train_gpt.py" && cp /tmp/repo/benchmark.py "/tmp/variants/$name/"
done
cd /tmp/repo
if [ -z "${DRY_EXTRA:-}" ]; then
python3 -m pip install -q --no-index --no-deps "$REPO"/.gpu/gpu/zstandard-*.whl
say "building mamba-ssm (sm_90 only), timing FlexAttention's options meanwhile"
mkdir -p /tmp/build && tar xzf "$REPO"/.gpu/gpu/mamba_ssm-*.tar.gz -C /tmp/build --strip-components=1
sed -i -E 's/cc_flag\.append\("arch=compute_(1[0-9]{2}|[0-8][0-9]),code=sm_[0-9]+"\)/cc_flag.pop()/' /tmp/build/setup.py
(cd /tmp/build && MAMBA_FORCE_BUILD=TRUE MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps --no-index . \
  > "$RES/mamba_build.txt" 2>&1; echo $? > "$RES/mamba_build_rc") &
if selected flex_configs; then
  python3 measurements/flex_configs.py --json "$RES/flex_configs.json" > "$RES/flex_configs.txt" 2>&1
  say "flex_configs exit $?"; tail -n 2 "$RES/flex_configs.txt"
fi
wait
say "mamba-ssm build exit $(cat "$RES/mamba_build_rc"): $(python3 -c 'import mamba_ssm; print(mamba_ssm.__version__)' 2>&1 | tail -1)"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv > "$RES/nvidia_smi.txt"

if selected benchmark; then
BENCH="benchmark.py --warmup 3 --iters 10"
say "benchmark: this script, with the kernel profile (alone on the GPU; training step only)"
python3 $BENCH --profile --train-only --json "$RES/benchmark.json" > "$RES/benchmark.txt" 2>&1
say "benchmark exit $?"; tail -n 1 "$RES/benchmark.txt"
if selected benchmark_text; then  # the same step on real text: does the embedding's backward cost more there?
  say "benchmark: this script on a batch of real text (training step only)"
  python3 $BENCH --train-only --tokens-from "$DATA/fineweb_train_000000.bin" --json "$RES/benchmark_text.json" \
    > "$RES/benchmark_text.txt" 2>&1
  say "benchmark_text exit $?"; tail -n 1 "$RES/benchmark_text.txt"
fi
for variant in /tmp/variants/*; do  # the step of each earlier script: each change's own gain
  name=$(basename "$variant")
  say "benchmark_$name (training step only)"
  (cd "$variant" && python3 $BENCH --train-only --json "$RES/benchmark_$name.json" > "$RES/benchmark_$name.txt" 2>&1)
  say "benchmark_$name exit $?"; tail -n 1 "$RES/benchmark_$name.txt"
done
if [ -f "$RES/flex_configs.json" ]; then
  best=$(python3 -c "import json; print(json.dumps(json.load(open('$RES/flex_configs.json'))['best']))")
  say "benchmark: this script with FlexAttention options $best (training step only)"
  python3 $BENCH --train-only --flex-options "$best" --json "$RES/benchmark_flex.json" > "$RES/benchmark_flex.txt" 2>&1
  say "benchmark_flex exit $?"; tail -n 1 "$RES/benchmark_flex.txt"
fi
if selected cudagraphs; then
  say "benchmark: this script, the model compiled with CUDA graphs (reduce-overhead; training step only)"
  python3 $BENCH --train-only --compile-mode reduce-overhead --json "$RES/benchmark_cudagraphs.json" > "$RES/benchmark_cudagraphs.txt" 2>&1
  say "benchmark_cudagraphs exit $?"; tail -n 1 "$RES/benchmark_cudagraphs.txt"
fi
fi
fi

COMMON="DATA_PATH=$DATA TOKENIZER_PATH=$TOK TRAIN_BATCH_TOKENS=65536 GRAD_ACCUM_STEPS=1 MAX_WALLCLOCK_SECONDS=0"
AB="ITERATIONS=285 WARMDOWN_ITERS=285 EMA_DECAY=0.95 EMA_EVERY=1 TTT_ENABLED=0 ZSTD_LEVEL=3 TRAIN_LOG_EVERY=50"
BEFORE=/tmp/variants/0_before_session4/train_gpt.py  # the script at the start of the fourth session (919b703)
JOBS=(
  # name | command (run in /tmp/runs/NAME; python3 scripts given relative to the repository). "after:NAME" waits for that
  # job to end, "trained:NAME" for its training to end (its step times are then its own: alone on the GPU)
  "final1000_ttt|train_gpt.py ITERATIONS=1000 WARMDOWN_ITERS=1750 TORCH_LOGS=recompiles"
  "final1000_before|trained:final1000_ttt $BEFORE ITERATIONS=1000 WARMDOWN_ITERS=1750"
  "gpu_tests|trained:final1000_ttt pytest"
  "proxy4000_ttt|trained:final1000_ttt train_gpt.py ITERATIONS=4000 TORCH_LOGS=recompiles"
  # TTT's learning rate at this scale, on the end-to-end run's artifact (its own TTT: the default, 0.0002)
  "ttt_lr0.0005|after:final1000_ttt train_gpt.py EVAL_ONLY=1 ARTIFACT=/tmp/runs/final1000_ttt/final_model.int8.ptz TTT_LR=0.0005"
  "ttt_lr0.0001|after:final1000_ttt train_gpt.py EVAL_ONLY=1 ARTIFACT=/tmp/runs/final1000_ttt/final_model.int8.ptz TTT_LR=0.0001"
  # the recipe A/B of the third session again, with the bigram table's learning rate reverted (919b703), and this script
  "ab_before_seed1337|trained:final1000_ttt $BEFORE $AB QAT_START_FRAC=1 SEED=1337"
  "ab_before_seed42|trained:final1000_ttt $BEFORE $AB QAT_START_FRAC=1 SEED=42"
  "ab_new_seed1337|trained:final1000_ttt train_gpt.py $AB QAT_START_FRAC=1 SEED=1337"
  # owed to the next session: PR #599's rows one at a time on the GPU (the fourth session's A/B left 0.20 BPB unexplained)
  "row_all_seed1337|measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337 OLD_ROWS=ortho,scales,dt,smear,fp32"
  "row_dt_seed1337|measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337 OLD_ROWS=dt"
  "row_fp32_seed1337|measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337 OLD_ROWS=fp32"
  "row_ortho_seed1337|measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337 OLD_ROWS=ortho"
  "row_scales_seed1337|measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337 OLD_ROWS=scales"
  "row_none_seed1337|measurements/recipe_rows.py $AB QAT_START_FRAC=1 SEED=1337"
  # run in the third session: the recipe A/B against the script before PR #599's rows (0d2e1ed); export variants
  "ab_old_seed1337|/tmp/old_train_gpt.py $AB SEED=1337"
  "ab_old_seed42|/tmp/old_train_gpt.py $AB SEED=42"
  "export_variants|after:final1000_ttt measurements/export_variants.py /tmp/runs/final1000_ttt/final_model.pt TTT_ENABLED=0"
  "ttt_lr0.002|after:final1000_ttt train_gpt.py EVAL_ONLY=1 ARTIFACT=/tmp/runs/final1000_ttt/final_model.int8.ptz TTT_LR=0.002"
  # run in the second session (commit bd990b6): the record-length proxies
  "proxy4000_qat|train_gpt.py ITERATIONS=4000 TORCH_LOGS=recompiles"
  "proxy4000_noqat|train_gpt.py ITERATIONS=4000 QAT_START_FRAC=1 TTT_ENABLED=0"
  "proxy1000_qat|train_gpt.py ITERATIONS=1000 WARMDOWN_ITERS=1750 TTT_ENABLED=0"
  "proxy1000_noqat|train_gpt.py ITERATIONS=1000 WARMDOWN_ITERS=1750 QAT_START_FRAC=1 TTT_ENABLED=0"
)
for job in "${JOBS[@]}"; do
  IFS='|' read -r name command <<< "$job"
  selected "$name" || continue
  while [ "$(jobs -rp | wc -l)" -ge "$MAX_PARALLEL" ]; do sleep 2; done
  mkdir -p "$RES/$name" "/tmp/runs/$name"
  say "start $name"
  (
    set -- $command
    if [ "${1%%:*}" = after ]; then  # wait for another job to finish
      while [ ! -f "$RES/${1#after:}/rc" ]; do sleep 5; done; shift
    elif [ "${1%%:*}" = trained ]; then  # or its training
      while [ ! -f "$RES/${1#trained:}/rc" ] && ! grep -q "^training done" "$RES/${1#trained:}/output.txt" 2>/dev/null; do sleep 2; done
      shift
    fi
    cd "/tmp/runs/$name"
    if [ "$1" = pytest ]; then
      (cd /tmp/repo && python3 -m pytest -v -rs tests/test_gpu.py) > "$RES/$name/output.txt" 2>&1
    else
      script=$1; shift; args=(); settings=()
      case "$script" in /*) ;; *) script=/tmp/repo/$script ;; esac
      for a in "$@"; do case "$a" in *=*) settings+=("$a") ;; *) args+=("$a") ;; esac; done
      env $COMMON "${settings[@]}" ${DRY_EXTRA:-} RUN_ID="$name" PYTHONUNBUFFERED=1 python3 "$script" "${args[@]}" \
        > "$RES/$name/output.txt" 2>&1
    fi
    rc=$?; echo $rc > "$RES/$name/rc"
    cp -r logs "$RES/$name/" 2>/dev/null
    say "done $name exit $rc"
  ) &
  sleep 5
done
wait
say "all done"
touch "$RES/done"
