#!/usr/bin/env bash
# The session driver (h200_session.sh) checked on a CPU before a lease: the jobs ONLY names run with a tiny model,
# in a copy of this checkout whose validation shard is cut to 30,000 tokens; no build, no benchmark or kernel timing.
#   ONLY="mamba_build eq_* scale_* bench_2gpu" bash measurements/dry_run.sh
# Needs .gpu/ as the driver does (devtext_sp1024/, or in .gpu_data/, tokenizers/, old_train_gpt.py, variants/). Uses /tmp/dry and the
# driver's folders under /tmp (cleared first); prints the timeline; each job's output is in /tmp/res/NAME/output.txt.
set -euo pipefail
: "${ONLY:?name the jobs to check, e.g. ONLY=\"row_base_seed1337 init1000\"}"
rm -rf /tmp/dry /tmp/res /tmp/runs /tmp/repo /tmp/variants /tmp/devtext_sp1024 /tmp/tokenizers /tmp/old_train_gpt.py
cp -r "$(dirname "$0")/.." /tmp/dry
python3 - <<'PY'
import glob
import numpy as np
path = glob.glob("/tmp/dry/.gpu*/devtext_sp1024/fineweb_val_000000.bin")[0]  # in .gpu/ or .gpu_data/
header = np.fromfile(path, dtype="<i4", count=256)
tokens = np.fromfile(path, dtype="<u2", offset=1024)[:30000]
header[2] = len(tokens)  # the shard's token count
with open(path, "wb") as f:
    f.write(header.tobytes())
    f.write(tokens.tobytes())
PY
cd /tmp/dry
ONLY="$ONLY" DRY_EXTRA="NUM_LAYERS=2 MODEL_DIM=32 NUM_HEADS=2 NUM_KV_HEADS=1 TRAIN_SEQ_LEN=256 TRAIN_BATCH_TOKENS=1024 \
ITERATIONS=6 WARMDOWN_ITERS=3 WARMUP_STEPS=1 TTT_EPOCHS=1 TTT_CHUNK_TOKENS=8192 SLIDING_WINDOW=64 EVAL_STRIDE=128 \
BIGRAM_BUCKETS=128" bash measurements/h200_session.sh run
grep -L -E '^(0|skipped|dry run: no build)$' /tmp/res/*/rc | sed 's|/tmp/res/\(.*\)/rc|failed: \1|' || true
