"""Shared fixtures and helpers: a tiny corpus, a SentencePiece tokenizer trained on it, shards in the challenge's
format, a tiny configuration of the script and ways to run it."""
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]  # the script, and the tools that tests import (benchmark.py)

import train_gpt as tg  # noqa: E402 (found through the path above)

TINY = dict(NUM_LAYERS="2", MODEL_DIM="32", NUM_HEADS="4", NUM_KV_HEADS="2", MLP_MULT="2", SLIDING_WINDOW="16",
            BIGRAM_BUCKETS="64", BIGRAM_HASH_DIM="8", VOCAB_SIZE="320", TRAIN_SEQ_LEN="64", TRAIN_BATCH_TOKENS="256",
            GRAD_ACCUM_STEPS="2", ITERATIONS="12", WARMUP_STEPS="2", WARMDOWN_ITERS="6", TRAIN_LOG_EVERY="4",
            VAL_LOSS_EVERY="6", SWA_LR_BELOW="0.6", SWA_EVERY="2", TTT_ENABLED="1", TTT_CHUNK_TOKENS="1024", TTT_EPOCHS="2",
            EVAL_BATCH_SEQS="8", SEED="7")


def run_script(cwd, env_extra, timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TINY, **env_extra)
    return subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tiny_hp(**overrides) -> tg.Hyperparameters:
    env = {**TINY, **{k.upper(): str(v) for k, v in overrides.items()}}
    return tg.Hyperparameters.from_env(env)


def reference_kernels() -> tg.Kernels:
    return tg.select_kernels(tiny_hp(), torch.device("cpu"))


def randomized_model(seed=0, **overrides) -> tg.HymbaGPT:
    """A tiny model with every parameter perturbed, so that zero-initialised projections do not hide a path."""
    torch.manual_seed(seed)
    model = tg.HymbaGPT(tiny_hp(**overrides), reference_kernels()).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                continue
            p.add_(torch.randn_like(p) * 0.2)
    return model


def final_line(stdout: str, prefix: str) -> dict:
    line = [l for l in stdout.splitlines() if l.startswith(prefix + " ")][-1]
    return {k: v for k, v in (item.split(":", 1) for item in line.split()[1:])}


def tiny_data(tokenizer_path, n_tokens=700):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    ids = [t for doc in make_documents(100, seed=9) for t in [1] + sp.encode(doc)][:n_tokens]
    return tg.Data(torch.tensor(ids), tg.build_byte_tables(sp, 320, torch.device("cpu")), [])


def fails_fast(cwd, env, *expected, code=2):
    """The script exits with `code` and one line on stderr naming what is wrong, before any training step."""
    started = time.perf_counter()
    result = run_script(cwd, env, timeout=60)
    assert result.returncode == code, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for text in expected:
        assert text in lines[0]
    assert "model_params" not in result.stdout and "step:" not in result.stdout, "failed only after training began"
    assert time.perf_counter() - started < 20
    return lines[0]


def paths(data, tokenizer, **extra):
    return dict(DATA_PATH=str(data), TOKENIZER_PATH=str(tokenizer), **{k: str(v) for k, v in extra.items()})


WORDS = ("the a of and to in is was for on that with as by at from his her they it be this which or had "
         "river stone garden light morning winter quiet letter window market summer road friend music "
         "café naïve façade — über").split()


def make_documents(n_docs: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
            sentences.append(" ".join(words).capitalize() + rng.choice(".!?"))
        docs.append(" ".join(sentences))
    return docs


def write_shard(path: Path, tokens) -> None:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(make_documents(400, seed=0)), model_prefix=str(folder / "tiny"), vocab_size=320,
        model_type="bpe", byte_fallback=True, pad_id=0, bos_id=1, eos_id=2, unk_id=3, minloglevel=2)
    return folder / "tiny.model"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, tokenizer_path) -> Path:
    """Two train shards and one validation shard; every document starts with BOS (id 1)."""
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    folder = tmp_path_factory.mktemp("data")

    def stream(n_docs, seed):
        return [t for doc in make_documents(n_docs, seed) for t in [1] + sp.encode(doc)]

    write_shard(folder / "fineweb_train_000000.bin", stream(300, seed=1))
    write_shard(folder / "fineweb_train_000001.bin", stream(300, seed=2))
    write_shard(folder / "fineweb_val_000000.bin", stream(60, seed=3))
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, dataset, tokenizer_path):
    cwd = tmp_path_factory.mktemp("run")
    result = run_script(cwd, dict(DATA_PATH=str(dataset), TOKENIZER_PATH=str(tokenizer_path), RUN_ID="tiny"))
    return cwd, result
