"""Shared fixtures: a tiny corpus, a SentencePiece tokenizer trained on it, and shards in the challenge's format."""
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = dict(NUM_LAYERS="2", MODEL_DIM="32", NUM_HEADS="4", NUM_KV_HEADS="2", MLP_MULT="2", SLIDING_WINDOW="16",
            BIGRAM_BUCKETS="64", BIGRAM_HASH_DIM="8", VOCAB_SIZE="320", TRAIN_SEQ_LEN="64", TRAIN_BATCH_TOKENS="256",
            GRAD_ACCUM_STEPS="2", ITERATIONS="12", WARMUP_STEPS="2", WARMDOWN_ITERS="6", TRAIN_LOG_EVERY="4",
            VAL_LOSS_EVERY="6", EMA_DECAY="0.5", EMA_EVERY="2", TTT_CHUNK_TOKENS="1024", TTT_EPOCHS="2",
            EVAL_BATCH_SEQS="8", SEED="7")


def run_script(cwd, env_extra, timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TINY, **env_extra)
    return subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


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
    import sentencepiece as spm
    folder = tmp_path_factory.mktemp("tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(make_documents(400, seed=0)), model_prefix=str(folder / "tiny"), vocab_size=320,
        model_type="bpe", byte_fallback=True, pad_id=0, bos_id=1, eos_id=2, unk_id=3, minloglevel=2)
    return folder / "tiny.model"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, tokenizer_path) -> Path:
    """Two train shards and one validation shard; every document starts with BOS (id 1)."""
    import sentencepiece as spm
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
