"""Make a small copy of a shard folder for a quick run (on CPU, scoring FineWeb's 62M validation
tokens alone takes hours): the first train shards, linked, and the validation stream cut short.

    python3 tools/small_split.py SOURCE DEST [--train-shards 1] [--val-tokens 262144]

SOURCE holds fineweb_train_*.bin and fineweb_val_*.bin shards in the challenge's format (a
DATA_PATH); DEST gets the first --train-shards train shards as hard links (copies across file
systems) and one fineweb_val_000000.bin with the first --val-tokens validation tokens. Point
DATA_PATH at DEST. Scores on it compare only with scores on the same split."""
import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def write_shard(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(tg.SHARD_HEADER_INTS, dtype="<i4")
    header[:3] = (tg.SHARD_MAGIC, tg.SHARD_VERSION, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--train-shards", type=int, default=1, help="train shards to link (default 1)")
    parser.add_argument("--val-tokens", type=int, default=262144,
                        help="validation tokens to keep (default 262,144)")
    args = parser.parse_args()
    try:
        train = tg.shard_paths(str(args.source), "train")[:args.train_shards]
        val_paths = tg.shard_paths(str(args.source), "val")
    except tg.ConfigError as error:
        sys.exit(f"error: {error}")
    args.dest.mkdir(parents=True, exist_ok=True)
    for shard in train:
        target = args.dest / shard.name
        if not target.exists():
            try:
                os.link(shard, target)
            except OSError:
                shutil.copyfile(shard, target)
    kept = []
    for shard in val_paths:
        count = tg.shard_token_count(shard)
        kept.append(np.fromfile(shard, dtype="<u2", count=count, offset=tg.SHARD_HEADER_INTS * 4))
        if sum(map(len, kept)) >= args.val_tokens:
            break
    val = np.concatenate(kept)[:args.val_tokens]
    write_shard(args.dest / "fineweb_val_000000.bin", val)
    print(f"{args.dest}: {len(train)} train shards, {len(val):,} validation tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
