"""Use to choose the TTT settings: score one artifact with score-first TTT under several settings in one process,
compiling once, and project each one's evaluation time for FineWeb on 8 GPUs (GPU or CPU).

    ARTIFACT=final_model.int8.ptz DATA_PATH=... TOKENIZER_PATH=... RUN_ID=sweep \\
      python3 tools/ttt_sweep.py LR:EPOCHS:CHUNK_TOKENS [LR:EPOCHS:CHUNK_TOKENS ...]

The artifact is scored as EVAL_ONLY=1 scores it (its own settings); then, for each entry, its weights are read
back and TTT runs with that learning rate, epochs and chunk size (the other TTT settings as given or the
artifact's). Each entry logs `ttt_sweep lr:... epochs:... chunk:... val_bpb:... gain:... ttt_s:... projected_s:...`
(gain: the roundtrip score less the TTT score) to logs/RUN_ID.txt and the console, and all of them to
logs/RUN_ID.json.

projected_s is the evaluation's time for FineWeb's validation stream on 8 GPUs, projected from this device: the
roundtrip's scoring time per window, times a rank's share of FineWeb's windows (1/8), plus TTT's time (scoring,
then training) per window here, times the windows one rank handles per chunk (ceil(windows / 8): a chunk of fewer
than 8 windows leaves ranks idle) for each of FineWeb's chunks. Communication (one all-reduce of the gradients per epoch) is not counted.
"""
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where train_gpt.py is
import train_gpt as tg  # noqa: E402

FINEWEB_VAL_TOKENS = 62_021_846
GPUS = 8


def parse(entry: str) -> tuple[float, int, int]:
    try:
        lr, epochs, chunk = entry.split(":")
        config = float(lr), int(epochs), int(chunk)
    except ValueError:
        sys.exit(f"error: {entry!r} is not LR:EPOCHS:CHUNK_TOKENS")
    if not (0 < config[0] <= 10 and config[1] >= 1 and config[2] >= 1):
        sys.exit(f"error: {entry!r}: the learning rate must be in (0, 10], epochs and chunk tokens >= 1")
    return config


def windows_in(tokens: int, seq_len: int) -> int:
    return math.ceil((tokens - 1) / seq_len)


def projected_seconds(score_s: float, ttt_s: float, tokens: int, chunk: int, seq_len: int) -> float:
    """FineWeb's evaluation on GPUS GPUs, from this device's scoring time (score_s) and TTT time (ttt_s) for a
    validation stream of `tokens` tokens: per window, times the windows one rank handles."""
    score_per_window = score_s / windows_in(tokens, seq_len)
    ttt_per_window = ttt_s / windows_in(tokens, seq_len)  # scoring and training
    scoring = score_per_window * math.ceil(windows_in(FINEWEB_VAL_TOKENS, seq_len) / GPUS)
    chunks = math.ceil((FINEWEB_VAL_TOKENS - 1) / chunk)
    return scoring + ttt_per_window * chunks * math.ceil(math.ceil(chunk / seq_len) / GPUS)


def sweep(configs: list) -> None:
    os.environ.update(EVAL_ONLY="1", TTT_ENABLED="1")  # given: the artifact's own settings yield to them
    hp = tg.Hyperparameters.from_env()
    run = tg.setup_run(hp)
    saved = tg.read_artifact(hp.artifact)
    kernels = tg.validate_setup(hp, run, saved)
    data = tg.load_data(hp, run)
    model = tg.build_model(hp, kernels, run.device)
    compiled = tg.maybe_compile(model, hp, run.device)
    weights = tg.unpack_artifact(saved.blob)
    n = len(data.val_tokens)
    for _, _, chunk in configs:  # compile every shape first: no config's time includes compiling
        hp.ttt_chunk_tokens = chunk
        tg.compile_evaluation(model, compiled, data, hp, run)
    model.load_state_dict(weights)
    t0 = run.clock()
    _, roundtrip = tg.evaluate_bpb(compiled, data, hp, run)
    score_s = run.clock() - t0
    run.log(f"ttt_sweep roundtrip val_bpb:{roundtrip:.5f} score_s:{score_s:.2f}")
    results = dict(artifact=hp.artifact, device=tg.describe_device(run.device), roundtrip_val_bpb=roundtrip, sweep=[])
    for lr, epochs, chunk in configs:
        hp.ttt_lr, hp.ttt_epochs, hp.ttt_chunk_tokens = lr, epochs, chunk
        model.load_state_dict(weights)
        t0 = run.clock()
        _, bpb = tg.evaluate_with_ttt(compiled, data, hp, run, time.perf_counter())
        seconds = run.clock() - t0
        projected = projected_seconds(score_s, seconds, n, chunk, hp.train_seq_len)
        run.log(f"ttt_sweep lr:{lr:g} epochs:{epochs} chunk:{chunk} val_bpb:{bpb:.5f} gain:{roundtrip - bpb:.5f} "
                f"ttt_s:{seconds:.2f} projected_s:{projected:.0f}")
        results["sweep"].append(dict(lr=lr, epochs=epochs, chunk=chunk, val_bpb=bpb, ttt_s=seconds,
                                     projected_s=projected))
    if run.rank == 0:
        run.summary_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    sweep([parse(entry) for entry in sys.argv[1:]])
