#!/usr/bin/env python3
"""Fetch the challenge's tokenized FineWeb export onto this machine, or check it.

    python3 data/cached_challenge_fineweb.py --variant sp1024 --train-shards 80
    python3 data/cached_challenge_fineweb.py --variant sp1024 --mirror /shared/parameter-golf
    python3 data/cached_challenge_fineweb.py --variant sp1024 --check

Files land in <out>/datasets/fineweb10B_<variant>/ and <out>/tokenizers/. --mirror and --check
also take a plain folder of shards, such as the training script's DATA_PATH. The hub is reached
through huggingface_hub.hf_hub_download, as the challenge's own script of this name does, so
HF_TOKEN, HF_ENDPOINT, HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE and its other settings apply, and
so do that script's MATCHED_FINEWEB_REPO_ID and MATCHED_FINEWEB_REMOTE_ROOT_PREFIX.
data/README.md describes the layout, the shard format and the manifest shapes read.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The dataset repository and the folder of it that holds the export; the environment variables
# are the challenge's script's, so that its users' settings keep working here.
DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
DEFAULT_REMOTE_ROOT = "datasets"

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
BOS_ID = 1

# variant -> (vocabulary size, SentencePiece model published for it)
VARIANTS = {
    "sp512": (512, "fineweb_512_bpe.model"),
    "sp1024": (1024, "fineweb_1024_bpe.model"),
    "sp2048": (2048, "fineweb_2048_bpe.model"),
    "sp4096": (4096, "fineweb_4096_bpe.model"),
    "sp8192": (8192, "fineweb_8192_bpe.model"),
    "byte260": (260, None),  # bytes plus specials: no SentencePiece model
}
# The sp1024 export has a single validation shard; assumed when a manifest gives no count.
DEFAULT_VAL_SHARDS = 1

SCAN_TOKENS = 1 << 24  # tokens per step when scanning a shard (32 MiB of uint16)
HASH_BYTES = 1 << 24
SHA256 = re.compile(r"[0-9a-f]{64}")

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
    sha256: str | None = None  # expected checksum, when the manifest says


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


def shard_specs(entry: dict, split: str) -> list[tuple[str, int | None, str | None]] | None:
    """(name, expected bytes, expected sha256) of a split's shards as the manifest gives them,
    or None."""
    listed = entry.get(split)
    if listed is None and isinstance(entry.get("stats"), dict):
        listed = entry["stats"].get(f"files_{split}")
    if listed is None:
        return None
    if isinstance(listed, int) and not isinstance(listed, bool):
        return [(standard_shard_name(split, i), None, None) for i in range(listed)]
    if not isinstance(listed, list):
        raise DataError(f"manifest: '{split}' must be a list of shards or a count")
    specs = []
    for shard in listed:
        if isinstance(shard, str):
            specs.append((plain_name(shard, f"a {split} shard"), None, None))
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
        sha256 = shard.get("sha256")
        if sha256 is not None and not (isinstance(sha256, str) and SHA256.fullmatch(sha256.lower())):
            raise DataError(f"manifest: bad sha256 in {split} shard entry {shard!r}")
        specs.append((plain_name(shard.get("name"), f"a {split} shard"), size,
                      sha256 and sha256.lower()))
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
        val = [(standard_shard_name("val", i), None, None) for i in range(DEFAULT_VAL_SHARDS)]
    train = shard_specs(entry, "train")
    if train is None:
        train = [(standard_shard_name("train", i), None, None) for i in range(train_shards)]
    elif len(train) < train_shards:
        raise DataError(f"{variant} has only {len(train)} train shards in the manifest, "
                        f"asked for {train_shards}")

    items = [Item(path, out / "tokenizers" / Path(path).name, None, False)
             for path in tokenizer_paths(manifest or {}, entry, variant)]
    for name, size, sha256 in val + train[:train_shards]:
        items.append(Item(f"datasets/{dataset_dir}/{name}",
                          out / "datasets" / dataset_dir / name, size, True, sha256))
    return items


# ---------------------------------------------------------------- sources

def read_manifest_file(path: Path, where: str) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{where} is not a JSON object")
    return manifest


def link_or_copy(source: Path, dest: Path, copy: bool = False) -> None:
    """Hard-link source to dest (no extra disk space), or copy it where a link does not work."""
    if not copy:
        try:
            os.link(source, dest)
            return
        except OSError:
            pass  # another filesystem, or links not allowed: copy instead
    shutil.copyfile(source, dest)


def first_line(error: BaseException | None) -> str:
    if error is None:
        return "no reason given"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def stop_aware_bar():
    """huggingface_hub's progress bar class, made to stop a download once another one failed
    or the user pressed Ctrl-C: hf_hub_download calls update() for every chunk it receives,
    and nothing else in it can be interrupted from another thread. (Its own bar is kept, so
    HF_HUB_DISABLE_PROGRESS_BARS and its terminal detection still apply.)"""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class StopAwareBar(hf_tqdm):
        def update(self, n=1):
            if _stop.is_set():
                raise Stopped()
            return super().update(n)

    return StopAwareBar


class Hub:
    """The Hugging Face dataset repository, through huggingface_hub.hf_hub_download.

    Each file goes into the shared HF cache (HF_HOME / HF_HUB_CACHE) and is then hard-linked,
    or copied, into the output folder, as the challenge's script does. The token (HF_TOKEN),
    endpoint (HF_ENDPOINT), retries, resuming a cut transfer and offline use of the cache
    (HF_HUB_OFFLINE=1) are huggingface_hub's."""

    def __init__(self, repo_id: str, root: str):
        # imported lazily, so that --mirror and --check work without it
        if importlib.util.find_spec("huggingface_hub") is None:
            raise DataError("downloading from the hub needs huggingface_hub (pip install "
                            "huggingface_hub); --mirror and --check work without it")
        self.repo_id = repo_id
        self.root = root.strip("/")
        self.bar = stop_aware_bar()

    def repo_path(self, remote: str) -> str:
        return f"{self.root}/{remote}" if self.root else remote

    def url(self, remote: str) -> str:
        from huggingface_hub import hf_hub_url
        return hf_hub_url(self.repo_id, self.repo_path(remote), repo_type="dataset")

    def describe(self) -> str:
        from huggingface_hub import constants
        return f"{constants.ENDPOINT}/datasets/{self.repo_id}/tree/main/{self.root}".removesuffix("/")

    def download(self, remote: str) -> Path:
        """The file's path in the HF cache, downloading it there when it is not yet."""
        from huggingface_hub import hf_hub_download
        try:
            return Path(hf_hub_download(self.repo_id, self.repo_path(remote), repo_type="dataset",
                                        tqdm_class=self.bar))
        except Stopped:
            raise
        except Exception as e:
            explained = self.explain(e, remote)
            if explained is e:
                raise
            raise explained from None

    def explain(self, e: Exception, remote: str) -> Exception:
        """huggingface_hub's failure as a one-line DataError; anything else is returned as is
        (a full disk, for one, is worded by fetch_item)."""
        from huggingface_hub import constants
        from huggingface_hub import errors as hf
        url = self.url(remote)
        if isinstance(e, hf.GatedRepoError):
            return DataError(f"{self.repo_id} is a gated repository: accept its terms on the hub "
                             f"and set HF_TOKEN ({first_line(e)}: {url})")
        if isinstance(e, hf.RepositoryNotFoundError):
            return DataError(f"repository {self.repo_id} not found on {constants.ENDPOINT} "
                             f"({first_line(e)}); check MATCHED_FINEWEB_REPO_ID, or set HF_TOKEN "
                             f"if it is private")
        # LocalEntryNotFoundError comes before EntryNotFoundError, which it is a kind of.
        if isinstance(e, hf.LocalEntryNotFoundError):
            if constants.HF_HUB_OFFLINE or isinstance(e.__cause__, hf.OfflineModeIsEnabled):
                return DataError(f"HF_HUB_OFFLINE is set and {self.repo_path(remote)} of "
                                 f"{self.repo_id} is not in the HF cache")
            return DataError(f"network failure fetching {url}: {first_line(e.__cause__)}")
        if isinstance(e, hf.EntryNotFoundError):
            return DataError(f"not found on the hub ({first_line(e)}): {url} (check the variant "
                             f"and MATCHED_FINEWEB_REMOTE_ROOT_PREFIX)")
        if isinstance(e, hf.HfHubHTTPError):
            return DataError(f"the hub answered {first_line(e)} for {url}")
        if type(e).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3"):
            return DataError(f"network failure fetching {url}: {first_line(e)}")
        if isinstance(e, OSError) and str(e).startswith("Consistency check failed"):
            # huggingface_hub got a different number of bytes than the hub announced
            return DataError(f"downloaded {remote} failed validation ({first_line(e)}); removed it")
        return e

    def manifest_file(self) -> tuple[Path, str]:
        # The hub always publishes a manifest, so a missing one is an error (not found).
        return self.download("manifest.json"), self.url("manifest.json")

    def prepare(self, items: list[Item]) -> list[Item]:
        return items  # the hub is asked file by file; a missing one is named when reached

    def fetch(self, remote: str, dest: Path) -> str | None:
        """Put the file at dest; return the sha256 the hub gives for it, if it gives one."""
        blob = self.download(remote).resolve()
        link_or_copy(blob, dest)
        # The cache names a blob after its ETag, which for a file stored with LFS or Xet (the
        # shards, the tokenizer models) is the sha256 of its content.
        return blob.name if SHA256.fullmatch(blob.name) else None

    def forget(self, remote: str) -> str:
        """Remove a file that failed validation from the HF cache, so that a rerun downloads it
        again instead of reusing it; returns a note for the error message."""
        from huggingface_hub import try_to_load_from_cache
        pointer = try_to_load_from_cache(self.repo_id, self.repo_path(remote), repo_type="dataset")
        if not isinstance(pointer, str):
            return ""
        blob = Path(pointer).resolve()
        try:
            blob.unlink(missing_ok=True)
            Path(pointer).unlink(missing_ok=True)
        except OSError as e:
            return f"; could not remove it from the HF cache ({e.strerror}): delete {blob}"
        return " (and from the HF cache)"


def holds_shards(folder: Path) -> bool:
    """Whether folder directly holds shards, as the training script's DATA_PATH does."""
    return any(folder.glob("fineweb_train_*.bin")) or any(folder.glob("fineweb_val_*.bin"))


class Mirror:
    """A local or shared copy of the export; files are hard-linked when possible."""

    def __init__(self, path: Path, copy: bool, root: str = DEFAULT_REMOTE_ROOT):
        # A copy of the hub repository (the export under DIR/<root>/), a folder laid out like
        # our output (DIR/datasets/fineweb10B_*, DIR/tokenizers), or a plain folder of shards
        # (a DATA_PATH folder), where every file is looked for by its name alone.
        hub_like = path / root.strip("/")
        self.plain = False
        if (hub_like / "datasets").is_dir() or (hub_like / "manifest.json").is_file():
            self.root = hub_like
        elif (path / "datasets").is_dir():
            self.root = path
        elif holds_shards(path):
            self.root, self.plain = path, True
        else:
            raise DataError(f"mirror {path} has no datasets/ folder and no fineweb_*.bin shards")
        self.copy = copy

    def describe(self) -> str:
        return str(self.root)

    def manifest_file(self) -> tuple[Path, str] | None:
        path = self.root / "manifest.json"
        return (path, str(path)) if path.is_file() else None

    def source(self, remote: str) -> Path:
        return self.root / (Path(remote).name if self.plain else remote)

    def prepare(self, items: list[Item]) -> list[Item]:
        """The items to fetch, checked to be all in the mirror before anything is linked or
        copied. A plain folder of shards may lack the tokenizer: it is then left out, with a
        warning."""
        absent = [item for item in items
                  if not is_complete(item) and not self.source(item.remote).is_file()]
        if self.plain and any(not item.shard for item in absent):
            names = ", ".join(Path(item.remote).name for item in absent if not item.shard)
            print(f"warning: the plain folder of shards {self.root} has no {names}; "
                  f"the output gets no tokenizer from it", file=sys.stderr)
            items = [item for item in items if item.shard or item not in absent]
            absent = [item for item in absent if item.shard]
        if absent:
            shown = ", ".join(str(self.source(item.remote).relative_to(self.root))
                              for item in absent[:3])
            more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
            raise DataError(f"{len(absent)} file(s) not in the mirror {self.root}: {shown}{more}; "
                            f"nothing was linked or copied")
        return items

    def fetch(self, remote: str, dest: Path) -> None:
        source = self.source(remote)
        if not source.is_file():
            raise DataError(f"not in the mirror: {source}")
        link_or_copy(source, dest, self.copy)

    def forget(self, remote: str) -> str:
        return ""  # the mirror's own file is left alone


def load_manifest(source: Hub | Mirror, out: Path, skip: bool) -> tuple[dict | None, Path | None]:
    """The source's manifest and its file, to store with store_manifest once the files are
    known to be there; with skip, the one stored in <out> and no file."""
    stored = out / "manifest.json"
    if skip:
        if stored.is_file():
            return read_manifest_file(stored, str(stored)), None
        print(f"warning: --skip-manifest and no {stored}: using the standard file names",
              file=sys.stderr)
        return None, None
    found = source.manifest_file()
    if found is None:
        return None, None
    path, where = found
    return read_manifest_file(path, where), path


def store_manifest(path: Path, out: Path) -> None:
    """Keep the manifest the files were chosen by as <out>/manifest.json."""
    out.mkdir(parents=True, exist_ok=True)
    stored = out / "manifest.json"
    part = stored.with_name(stored.name + ".part")
    shutil.copyfile(path, part)
    os.replace(part, stored)


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BYTES):
            digest.update(block)
    return digest.hexdigest()


def verify(part: Path, item: Item, vocab_size: int, hub_sha256: str | None) -> None:
    """Size and checksum against what the manifest and the hub say; a shard's header and tokens."""
    size = part.stat().st_size
    if item.size is not None and size != item.size:
        raise BadShard(f"{size} bytes where the manifest says {item.size}")
    expected = [(sha, who) for sha, who in ((item.sha256, "the manifest"), (hub_sha256, "the hub"))
                if sha]
    if expected:
        actual = file_sha256(part)
        for sha, who in expected:
            if actual != sha:
                raise BadShard(f"sha256 {actual[:16]}... where {who} says {sha[:16]}...")
    if item.shard:
        scan_tokens(part, shard_token_count(part), vocab_size)
    elif size == 0:
        raise BadShard("empty file")


def fetch_item(source: Hub | Mirror, item: Item, vocab_size: int) -> str:
    """Bring one file in place through <name>.part, renamed only once it validates."""
    if is_complete(item):
        return "complete"
    if _stop.is_set():
        raise Stopped()
    part = item.local.with_name(item.local.name + ".part")
    # A .part left by an interrupted run is started again.
    part.unlink(missing_ok=True)
    try:
        hub_sha256 = source.fetch(item.remote, part)
        try:
            verify(part, item, vocab_size, hub_sha256)
        except BadShard as e:
            part.unlink(missing_ok=True)
            raise DataError(f"downloaded {item.remote} failed validation ({e}); "
                            f"removed it{source.forget(item.remote)}") from None
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
    """One stderr line per finished file, through tqdm.write where tqdm is installed so that
    huggingface_hub's byte progress bars (shown on a terminal) are not torn."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm
            self.write = lambda line: tqdm.write(line, file=sys.stderr)
        except ImportError:
            self.write = lambda line: print(line, file=sys.stderr)
        self.done = 0
        self.total = total

    def advance(self, item: Item, outcome: str) -> None:
        self.done += 1
        self.write(f"[{self.done}/{self.total}] {outcome}: {item.local.name}")


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
    # The challenge's script takes the shard count as a bare number too.
    parser.add_argument("train_shards_positional", nargs="?", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="sp1024", help=f"one of {', '.join(VARIANTS)}")
    parser.add_argument("--train-shards", type=int,
                        help="how many train shards to take, from the first (default 80)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output root (default: the folder of this script)")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    parser.add_argument("--mirror", type=Path,
                        help="take the files from this local/shared folder instead of the hub: "
                             "a copy of the hub repository, a folder laid out like --out, or a "
                             "plain folder of shards (fineweb_train_*.bin / fineweb_val_*.bin "
                             "directly in it, like DATA_PATH; the tokenizer is taken from it "
                             "too if it is there); every file needed is checked to be there "
                             "before any is linked or copied")
    parser.add_argument("--copy", action="store_true",
                        help="with --mirror: copy even where hard links would work")
    parser.add_argument("--skip-manifest", action="store_true",
                        help="do not fetch manifest.json; use <out>/manifest.json if there, "
                             "else the standard file names")
    parser.add_argument("--check", action="store_true",
                        help="only validate the shards already there: those directly in --out "
                             "when it holds fineweb_*.bin shards (a DATA_PATH folder), else "
                             "those in <out>/datasets/fineweb10B_<variant>/")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.variant not in VARIANTS:
        print(f"error: unknown variant {args.variant!r} (known: {', '.join(VARIANTS)})",
              file=sys.stderr)
        return 2
    counts_given = {n for n in (args.train_shards, args.train_shards_positional) if n is not None}
    if len(counts_given) > 1:
        print("error: two different train shard counts given (a bare number and --train-shards)",
              file=sys.stderr)
        return 2
    train_shards = counts_given.pop() if counts_given else 80
    if train_shards < 0 or args.workers < 1:
        print("error: --train-shards must be >= 0 and --workers >= 1", file=sys.stderr)
        return 2
    vocab_size = VARIANTS[args.variant][0]

    if args.check:  # --out itself when it holds shards, like a DATA_PATH folder
        dataset_dir = args.out / "datasets" / f"fineweb10B_{args.variant}"
        return check(args.out if holds_shards(args.out) else dataset_dir, vocab_size)

    remote_root = os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", DEFAULT_REMOTE_ROOT)
    try:
        if args.mirror:
            source = Mirror(args.mirror, args.copy, remote_root)
        else:
            source = Hub(os.environ.get("MATCHED_FINEWEB_REPO_ID") or DEFAULT_REPO_ID, remote_root)
        manifest, manifest_path = load_manifest(source, args.out, args.skip_manifest)
        items = source.prepare(build_plan(manifest, args.variant, train_shards, args.out))
        if manifest_path:
            store_manifest(manifest_path, args.out)
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
