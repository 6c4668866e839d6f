#!/usr/bin/env python3
"""Fetch the challenge's tokenized FineWeb export onto this machine, or check it.

    python3 data/cached_challenge_fineweb.py --variant sp1024 --train-shards 80
    python3 data/cached_challenge_fineweb.py --variant sp1024 --mirror /shared/parameter-golf
    python3 data/cached_challenge_fineweb.py --variant sp1024 --check

Files land in <out>/datasets/fineweb10B_<variant>/ and <out>/tokenizers/.
data/README.md describes the layout, the shard format and the manifest shapes read.
"""
from __future__ import annotations

import argparse
import errno
import http.client
import json
import os
import shutil
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HUB_REPO = "willdepueoai/parameter-golf"
HUB_URL = f"https://huggingface.co/datasets/{HUB_REPO}/resolve/main"
HUB_ROOT = "datasets"  # the export sits in this folder of the dataset repository

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
BOS_ID = 1

# variant -> (vocabulary size, SentencePiece model published for it)
VARIANTS = {
    "sp1024": (1024, "fineweb_1024_bpe.model"),
    "sp4096": (4096, "fineweb_4096_bpe.model"),
    "sp8192": (8192, "fineweb_8192_bpe.model"),
    "byte260": (260, None),  # bytes plus specials: no SentencePiece model
}
# The sp1024 export has a single validation shard; assumed when a manifest gives no count.
DEFAULT_VAL_SHARDS = 1

SCAN_TOKENS = 1 << 24  # tokens per step when scanning a shard (32 MiB of uint16)
COPY_BYTES = 1 << 20
HTTP_TIMEOUT_S = 60

# Set when one download fails or the user interrupts, so the other workers stop early.
_stop = threading.Event()


class DataError(Exception):
    """An expected failure, reported as one 'error: ...' line without a traceback."""


class BadShard(DataError):
    """A shard whose header, size or tokens are wrong."""


class Stopped(Exception):
    """Raised in a worker after another worker failed; never reported itself."""


# ---------------------------------------------------------------- shard format

def shard_token_count(path: Path) -> int:
    """Check a shard's header and file size (no token scan) and return its token count."""
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise BadShard(f"truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != SHARD_MAGIC:
        raise BadShard(f"bad magic {header[0]} (expected {SHARD_MAGIC})")
    if header[1] != SHARD_VERSION:
        raise BadShard(f"unsupported version {header[1]} (expected {SHARD_VERSION})")
    count = int(header[2])
    expected = HEADER_BYTES + 2 * count
    if count < 0 or size != expected:
        raise BadShard(f"size {size} bytes does not match the header's {count} tokens "
                       f"({expected} bytes): truncated or corrupt")
    return count


def scan_tokens(path: Path, count: int, vocab_size: int) -> int:
    """Check every token is below vocab_size; return the number of BOS tokens (documents)."""
    if count == 0:
        return 0
    # memmap + fixed-size chunks: a 200 MB shard is scanned without loading it whole.
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))
    docs = 0
    for start in range(0, count, SCAN_TOKENS):
        chunk = tokens[start:start + SCAN_TOKENS]
        if int(chunk.max()) >= vocab_size:
            at = int(np.argmax(chunk >= vocab_size))
            raise BadShard(f"token {int(chunk[at])} at position {start + at} is outside "
                           f"the vocabulary of {vocab_size}")
        docs += int(np.count_nonzero(chunk == BOS_ID))
    return docs


# ---------------------------------------------------------------- what to fetch

@dataclass
class Item:
    remote: str       # path below the export root, e.g. "tokenizers/fineweb_1024_bpe.model"
    local: Path
    size: int | None  # expected bytes, when the manifest says
    shard: bool


def find_variant_entry(manifest: dict, variant: str) -> dict | None:
    """The manifest's entry for a variant: under "variants" or "datasets", keyed or listed."""
    names = {variant, f"fineweb10B_{variant}"}
    for container in (manifest.get("variants"), manifest.get("datasets")):
        if isinstance(container, dict):
            for name in names:
                if isinstance(container.get(name), dict):
                    return container[name]
        elif isinstance(container, list):
            for entry in container:
                if isinstance(entry, dict) and names & {entry.get("name"), entry.get("variant")}:
                    return entry
    return None


def standard_shard_name(split: str, index: int) -> str:
    return f"fineweb_{split}_{index:06d}.bin"


def plain_name(name: object, what: str) -> str:
    # Manifest names become local paths: refuse anything that could leave the folder.
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise DataError(f"manifest: {what} has a bad file name {name!r}")
    return name


def shard_specs(entry: dict, split: str) -> list[tuple[str, int | None]] | None:
    """(name, expected bytes) of a split's shards as the manifest gives them, or None."""
    listed = entry.get(split)
    if listed is None and isinstance(entry.get("stats"), dict):
        listed = entry["stats"].get(f"files_{split}")
    if listed is None:
        return None
    if isinstance(listed, int) and not isinstance(listed, bool):
        return [(standard_shard_name(split, i), None) for i in range(listed)]
    if not isinstance(listed, list):
        raise DataError(f"manifest: '{split}' must be a list of shards or a count")
    specs = []
    for shard in listed:
        if isinstance(shard, str):
            specs.append((plain_name(shard, f"a {split} shard"), None))
            continue
        if not isinstance(shard, dict):
            raise DataError(f"manifest: bad {split} shard entry {shard!r}")
        try:
            size = shard.get("bytes")
            if size is None and shard.get("tokens") is not None:
                size = HEADER_BYTES + 2 * int(shard["tokens"])
            size = None if size is None else int(size)
        except (TypeError, ValueError):
            raise DataError(f"manifest: bad size in {split} shard entry {shard!r}") from None
        specs.append((plain_name(shard.get("name"), f"a {split} shard"), size))
    return specs


def tokenizer_paths(manifest: dict, entry: dict, variant: str) -> list[str]:
    """Tokenizer files of a variant, as paths below the export root."""
    if "tokenizer_files" in entry:
        names = entry["tokenizer_files"]
    else:
        tokenizers = manifest.get("tokenizers")
        wanted = entry.get("tokenizer_name")
        if isinstance(tokenizers, dict):
            tokenizer = tokenizers.get(wanted)
        elif isinstance(tokenizers, list):
            tokenizer = next((t for t in tokenizers
                              if isinstance(t, dict) and t.get("name") == wanted), None)
        else:
            tokenizer = None
        if wanted and isinstance(tokenizer, dict):
            names = [tokenizer[k] for k in ("model_path", "vocab_path", "path") if tokenizer.get(k)]
        else:
            model = VARIANTS[variant][1]
            names = [model] if model else []
    if not isinstance(names, list):
        raise DataError("manifest: 'tokenizer_files' must be a list")
    paths = []
    for name in names:
        if not isinstance(name, str):
            raise DataError(f"manifest: bad tokenizer file {name!r}")
        # Bare names live in tokenizers/; paths are taken as given below the export root.
        parts = name.split("/")
        for part in parts:
            plain_name(part, "a tokenizer file")
        paths.append(name if len(parts) > 1 else f"tokenizers/{name}")
    return paths


def build_plan(manifest: dict | None, variant: str, train_shards: int, out: Path) -> list[Item]:
    """Every file to bring in: tokenizer files, the whole val split, the first train shards."""
    entry = find_variant_entry(manifest, variant) if manifest else None
    if manifest and entry is None:
        print(f"warning: the manifest has no entry for {variant}; using the standard file names",
              file=sys.stderr)
    entry = entry or {}
    dataset_dir = plain_name(entry.get("dataset_dir") or f"fineweb10B_{variant}", "dataset_dir")

    val = shard_specs(entry, "val")
    if val is None:
        val = [(standard_shard_name("val", i), None) for i in range(DEFAULT_VAL_SHARDS)]
    train = shard_specs(entry, "train")
    if train is None:
        train = [(standard_shard_name("train", i), None) for i in range(train_shards)]
    elif len(train) < train_shards:
        raise DataError(f"{variant} has only {len(train)} train shards in the manifest, "
                        f"asked for {train_shards}")

    items = [Item(path, out / "tokenizers" / Path(path).name, None, False)
             for path in tokenizer_paths(manifest or {}, entry, variant)]
    for name, size in val + train[:train_shards]:
        items.append(Item(f"datasets/{dataset_dir}/{name}",
                          out / "datasets" / dataset_dir / name, size, True))
    return items


# ---------------------------------------------------------------- sources

def fetch_remote(repo_path: str, dest: Path) -> None:
    """Download one file of the hub repository into dest, overwriting it.

    urllib and OS errors propagate; Hub.fetch words them. Tests replace this function.
    """
    with urllib.request.urlopen(f"{HUB_URL}/{repo_path}", timeout=HTTP_TIMEOUT_S) as response, \
            open(dest, "wb") as out:
        while block := response.read(COPY_BYTES):
            if _stop.is_set():
                raise Stopped()
            out.write(block)


def read_manifest_file(path: Path, where: str) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{where} is not a JSON object")
    return manifest


class Hub:
    """The Hugging Face dataset repository, over plain HTTPS."""

    def describe(self) -> str:
        return f"{HUB_URL}/{HUB_ROOT}"

    def manifest(self) -> dict:
        # The hub always publishes a manifest, so a missing one is an error (not found).
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "manifest.json"
            self.fetch("manifest.json", path)
            return read_manifest_file(path, f"{HUB_ROOT}/manifest.json on the hub")

    def fetch(self, remote: str, dest: Path) -> None:
        repo_path = f"{HUB_ROOT}/{remote}"
        url = f"{HUB_URL}/{repo_path}"
        try:
            fetch_remote(repo_path, dest)
        except urllib.error.HTTPError as e:
            # The hub answers 401 rather than 404 for a repository that does not exist.
            if e.code in (401, 403, 404):
                raise DataError(f"not found on the hub (HTTP {e.code}): {url} "
                                f"(check the repository {HUB_REPO} and the variant)") from None
            raise DataError(f"the hub answered HTTP {e.code} for {url}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError) as e:
            reason = getattr(e, "reason", None) or str(e) or type(e).__name__
            raise DataError(f"network failure fetching {url}: {reason}") from None


class Mirror:
    """A local or shared copy of the export; files are hard-linked when possible."""

    def __init__(self, path: Path, copy: bool):
        # Either a copy of the hub repository (the export under DIR/datasets/) or a folder
        # laid out like our output (DIR/datasets/fineweb10B_*, DIR/tokenizers).
        hub_like = path / HUB_ROOT
        if (hub_like / "datasets").is_dir() or (hub_like / "manifest.json").is_file():
            self.root = hub_like
        elif (path / "datasets").is_dir():
            self.root = path
        else:
            raise DataError(f"mirror {path} has no datasets/ folder")
        self.copy = copy

    def describe(self) -> str:
        return str(self.root)

    def manifest(self) -> dict | None:
        path = self.root / "manifest.json"
        return read_manifest_file(path, str(path)) if path.is_file() else None

    def fetch(self, remote: str, dest: Path) -> None:
        source = self.root / remote
        if not source.is_file():
            raise DataError(f"not in the mirror: {source}")
        if not self.copy:
            try:
                os.link(source, dest)
                return
            except OSError:
                pass  # another filesystem, or links not allowed: copy instead
        shutil.copyfile(source, dest)


# ---------------------------------------------------------------- download

def is_complete(item: Item) -> bool:
    """Already in place: right size and, for a shard, a header matching the size."""
    if not item.local.is_file():
        return False
    if item.size is not None and item.local.stat().st_size != item.size:
        return False
    if item.shard:
        try:
            shard_token_count(item.local)
        except BadShard:
            return False
    return True


def verify(part: Path, item: Item, vocab_size: int) -> None:
    size = part.stat().st_size
    try:
        if item.size is not None and size != item.size:
            raise BadShard(f"{size} bytes where the manifest says {item.size}")
        if item.shard:
            scan_tokens(part, shard_token_count(part), vocab_size)
        elif size == 0:
            raise BadShard("empty file")
    except BadShard as e:
        raise DataError(f"downloaded {item.remote} failed validation ({e}); removed it") from None


def fetch_item(source: Hub | Mirror, item: Item, vocab_size: int) -> str:
    """Bring one file in place through <name>.part, renamed only once it validates."""
    if is_complete(item):
        return "complete"
    if _stop.is_set():
        raise Stopped()
    part = item.local.with_name(item.local.name + ".part")
    # A .part left by an interrupted run is started again from zero.
    part.unlink(missing_ok=True)
    try:
        source.fetch(item.remote, part)
        verify(part, item, vocab_size)
        os.replace(part, item.local)
    except OSError as e:
        part.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise DataError(f"disk full while writing {item.local}; free some space and rerun "
                            f"(finished files are kept)") from None
        raise DataError(f"{e.strerror or e}: {e.filename or item.local}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return "fetched"


class Progress:
    """tqdm when installed, else one stderr line per finished file."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.bar = tqdm(total=total, unit="file", file=sys.stderr) if tqdm else None
        self.done = 0
        self.total = total

    def advance(self, item: Item, outcome: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        else:
            print(f"[{self.done}/{self.total}] {outcome}: {item.local.name}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def download(source: Hub | Mirror, items: list[Item], vocab_size: int, workers: int) -> dict:
    """Fetch all items in parallel; the first failure stops the rest and is raised."""
    for folder in {item.local.parent for item in items}:
        folder.mkdir(parents=True, exist_ok=True)
    _stop.clear()
    counts = {"fetched": 0, "complete": 0}
    progress = Progress(len(items))
    pool = ThreadPoolExecutor(max_workers=workers)
    futures = {pool.submit(fetch_item, source, item, vocab_size): item for item in items}
    try:
        for future in as_completed(futures):
            outcome = future.result()
            counts[outcome] += 1
            progress.advance(futures[future], outcome)
    except BaseException:
        _stop.set()
        raise
    finally:
        # Waiting here lets interrupted workers remove their .part files.
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
    return counts


# ---------------------------------------------------------------- check

def check(dataset_dir: Path, vocab_size: int) -> int:
    """Validate every shard in dataset_dir; print counts per split. Returns the exit code."""
    shards = sorted(dataset_dir.glob("fineweb_*.bin"))
    if not shards:
        print(f"error: no shards in {dataset_dir}", file=sys.stderr)
        return 1
    print(f"checking {dataset_dir} (vocabulary {vocab_size})")
    totals = {}  # split -> [shards, tokens, documents]
    bad = 0
    for path in shards:
        split = path.name.split("_")[1]
        try:
            count = shard_token_count(path)
            docs = scan_tokens(path, count, vocab_size)
        except (BadShard, OSError) as e:
            print(f"error: bad shard {path}: {e}", file=sys.stderr)
            bad += 1
            continue
        total = totals.setdefault(split, [0, 0, 0])
        total[0] += 1
        total[1] += count
        total[2] += docs
    for split in sorted(totals):
        n, tokens, docs = totals[split]
        print(f"{split}: {n} shards, {tokens:,} tokens, {docs:,} documents")
    print(f"total: {sum(t[0] for t in totals.values())} good shards, "
          f"{sum(t[1] for t in totals.values()):,} tokens, {bad} bad")
    partial = list(dataset_dir.glob("*.part"))
    if partial:
        print(f"note: {len(partial)} unfinished .part download(s); rerun the download to finish")
    return 1 if bad else 0


# ---------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="sp1024", help=f"one of {', '.join(VARIANTS)}")
    parser.add_argument("--train-shards", type=int, default=80,
                        help="how many train shards to take, from the first (default 80)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output root (default: the folder of this script)")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    parser.add_argument("--mirror", type=Path,
                        help="take the files from this local/shared folder instead of the hub")
    parser.add_argument("--copy", action="store_true",
                        help="with --mirror: copy even where hard links would work")
    parser.add_argument("--check", action="store_true",
                        help="only validate the shards already under --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.variant not in VARIANTS:
        print(f"error: unknown variant {args.variant!r} (known: {', '.join(VARIANTS)})",
              file=sys.stderr)
        return 2
    if args.train_shards < 0 or args.workers < 1:
        print("error: --train-shards must be >= 0 and --workers >= 1", file=sys.stderr)
        return 2
    vocab_size = VARIANTS[args.variant][0]

    if args.check:
        return check(args.out / "datasets" / f"fineweb10B_{args.variant}", vocab_size)

    try:
        source = Mirror(args.mirror, args.copy) if args.mirror else Hub()
        items = build_plan(source.manifest(), args.variant, args.train_shards, args.out)
        counts = download(source, items, vocab_size, args.workers)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the output folder cannot be created
        print(f"error: {e.strerror or e}: {e.filename or args.out}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; unfinished files were removed, rerun to resume",
              file=sys.stderr)
        return 130
    shards = sum(item.shard for item in items)
    print(f"{args.variant}: {shards} shards and {len(items) - shards} tokenizer file(s) "
          f"from {source.describe()} in {args.out} "
          f"({counts['fetched']} fetched, {counts['complete']} already complete)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
