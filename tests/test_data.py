"""Tests for data/cached_challenge_fineweb.py on tiny shards.

The hub path runs the real huggingface_hub client against a stand-in for the hub on
127.0.0.1 (LocalHub below); nothing leaves this machine and the user's HF cache is not used.
"""
import errno
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "data" / "cached_challenge_fineweb.py"
_spec = importlib.util.spec_from_file_location("cached_challenge_fineweb", SCRIPT)
cf = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cf  # dataclasses look the module up while it loads
_spec.loader.exec_module(cf)

DATASET = "datasets/fineweb10B_sp1024"
MODEL = "tokenizers/fineweb_1024_bpe.model"


def shard_bytes(tokens, magic=cf.SHARD_MAGIC, version=cf.SHARD_VERSION, count=None):
    header = np.zeros(cf.HEADER_INTS, dtype="<i4")
    header[:3] = magic, version, len(tokens) if count is None else count
    return header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes()


def doc_tokens(n_docs, seed, vocab=1024):
    """n_docs documents of random length, each starting with BOS."""
    rng = np.random.default_rng(seed)
    docs = [np.concatenate([[cf.BOS_ID], rng.integers(2, vocab, rng.integers(3, 40))])
            for _ in range(n_docs)]
    return np.concatenate(docs)


def make_export(root, n_train=3, manifest=None):
    """An export root: tokenizers/, datasets/fineweb10B_sp1024/ and optionally manifest.json."""
    (root / DATASET).mkdir(parents=True)
    (root / "tokenizers").mkdir()
    (root / MODEL).write_bytes(b"not a real sentencepiece model")
    (root / DATASET / "fineweb_val_000000.bin").write_bytes(shard_bytes(doc_tokens(5, 0)))
    for i in range(n_train):
        (root / DATASET / f"fineweb_train_{i:06d}.bin").write_bytes(shard_bytes(doc_tokens(7, i + 1)))
    if manifest is not None:
        (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def sizes_manifest(root, n_train):
    """A manifest in the documented "variants" shape, with the byte size of every shard."""
    def entry(name):
        return {"name": name, "bytes": (root / DATASET / name).stat().st_size}
    return {"variants": {"sp1024": {
        "dataset_dir": "fineweb10B_sp1024",
        "tokenizer_files": ["fineweb_1024_bpe.model"],
        "val": [entry("fineweb_val_000000.bin")],
        "train": [entry(f"fineweb_train_{i:06d}.bin") for i in range(n_train)],
    }}}


def main(args):
    """Run the script's main() in this process (mirror and --check paths)."""
    return cf.main([str(a) for a in args])


def run_cli(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def assert_one_error(stderr, *phrases):
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for phrase in phrases:
        assert phrase in last


def leftovers(out):
    return sorted(p.name for p in out.rglob("*.part"))


# ---------------------------------------------------------------- mirror

def test_mirror_end_to_end_hub_layout(tmp_path, capsys):
    export = make_export(tmp_path / "mirror" / "datasets", n_train=3)
    (export / "manifest.json").write_text(json.dumps(sizes_manifest(export, 3)))
    out = tmp_path / "out"

    assert main(["--mirror", tmp_path / "mirror", "--out", out, "--train-shards", "2"]) == 0

    got = sorted(p.name for p in (out / DATASET).iterdir())
    assert got == ["fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    for name in got:
        src, dst = export / DATASET / name, out / DATASET / name
        assert dst.read_bytes() == src.read_bytes()
        assert dst.stat().st_ino == src.stat().st_ino  # hard-linked, not copied
    assert (out / MODEL).read_bytes() == (export / MODEL).read_bytes()
    assert leftovers(out) == []

    capsys.readouterr()
    assert main(["--check", "--out", out]) == 0
    report = capsys.readouterr().out
    val_tokens = len(doc_tokens(5, 0))
    train_tokens = len(doc_tokens(7, 1)) + len(doc_tokens(7, 2))
    assert f"val: 1 shards, {val_tokens:,} tokens, 5 documents" in report
    assert f"train: 2 shards, {train_tokens:,} tokens, 14 documents" in report
    assert f"total: 3 good shards, {val_tokens + train_tokens:,} tokens, 0 bad" in report


def test_mirror_flat_layout_without_manifest_and_copy(tmp_path):
    export = make_export(tmp_path / "mirror", n_train=2)  # DIR/datasets/fineweb10B_sp1024
    out = tmp_path / "out"
    assert main(["--mirror", export, "--out", out, "--train-shards", "2", "--copy"]) == 0
    for name in ["fineweb_val_000000.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin"]:
        src, dst = export / DATASET / name, out / DATASET / name
        assert dst.read_bytes() == src.read_bytes()
        assert dst.stat().st_ino != src.stat().st_ino  # --copy: a separate file
    assert (out / MODEL).is_file()


def test_mirror_missing_shard_cli(tmp_path):
    export = make_export(tmp_path / "mirror", n_train=1)
    r = run_cli("--mirror", export, "--out", tmp_path / "out", "--train-shards", "2")
    assert r.returncode == 1
    assert_one_error(r.stderr, "not in the mirror", "fineweb_train_000001.bin")
    assert not (tmp_path / "out" / DATASET / "fineweb_train_000001.bin").exists()
    assert leftovers(tmp_path / "out") == []


def test_mirror_names_every_missing_file_before_linking_any(tmp_path):
    export = make_export(tmp_path / "mirror", n_train=6)
    (export / DATASET / "fineweb_val_000000.bin").unlink()
    out = tmp_path / "out"
    r = run_cli("--mirror", export, "--out", out, "--train-shards", "9", "--workers", "1")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"error: 4 file(s) not in the mirror {export}: {DATASET}/fineweb_val_000000.bin, "
        f"{DATASET}/fineweb_train_000006.bin, {DATASET}/fineweb_train_000007.bin and 1 more; "
        "nothing was linked or copied"]
    assert not out.exists()  # not one shard linked, not even the folders made


def plain_shards(folder, n_train=2, tokenizer=True):
    """A folder holding shards directly, like the training script's DATA_PATH."""
    folder.mkdir(parents=True)
    (folder / "fineweb_val_000000.bin").write_bytes(shard_bytes(doc_tokens(5, 0)))
    for i in range(n_train):
        (folder / f"fineweb_train_{i:06d}.bin").write_bytes(shard_bytes(doc_tokens(7, i + 1)))
    if tokenizer:
        (folder / "fineweb_1024_bpe.model").write_bytes(b"not a real sentencepiece model")
    return folder


@pytest.mark.parametrize("tokenizer", [True, False])
def test_mirror_plain_folder_of_shards(tmp_path, capsys, tokenizer):
    shards = plain_shards(tmp_path / "fineweb10B_sp1024", tokenizer=tokenizer)
    out = tmp_path / "out"
    assert main(["--mirror", shards, "--out", out, "--train-shards", "2"]) == 0
    names = ["fineweb_val_000000.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    for name in names:
        assert (out / DATASET / name).stat().st_ino == (shards / name).stat().st_ino  # linked
    err = capsys.readouterr().err
    if tokenizer:
        assert (out / MODEL).read_bytes() == (shards / "fineweb_1024_bpe.model").read_bytes()
        assert "warning" not in err
    else:  # a DATA_PATH folder holds no tokenizer: the shards alone, and a warning
        assert not (out / "tokenizers").exists()
        assert f"warning: the plain folder of shards {shards} has no fineweb_1024_bpe.model" in err
    assert main(["--mirror", shards, "--out", tmp_path / "more", "--train-shards", "3"]) == 1
    assert_one_error(capsys.readouterr().err, "1 file(s) not in the mirror",
                     "fineweb_train_000002.bin")


def test_check_a_plain_folder_of_shards(tmp_path):
    shards = plain_shards(tmp_path / "data_path", tokenizer=False)
    r = run_cli("--check", "--out", shards)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"checking {shards} (vocabulary 1024)"
    assert f"train: 2 shards, {len(doc_tokens(7, 1)) + len(doc_tokens(7, 2)):,} tokens" in r.stdout
    (shards / "fineweb_train_000001.bin").write_bytes(shard_bytes([1, 2, 3])[:-2])
    r = run_cli("--check", "--out", shards)
    assert r.returncode == 1 and "fineweb_train_000001.bin" in r.stderr and "1 bad" in r.stdout


def test_mirror_truncated_shard_cli(tmp_path):
    export = make_export(tmp_path / "mirror", n_train=1)
    shard = export / DATASET / "fineweb_train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    r = run_cli("--mirror", export, "--out", tmp_path / "out", "--train-shards", "1")
    assert r.returncode == 1
    assert_one_error(r.stderr, "fineweb_train_000000.bin", "failed validation", "truncated")
    assert not (tmp_path / "out" / DATASET / "fineweb_train_000000.bin").exists()
    assert shard.exists()  # the mirror's own file is left alone
    assert leftovers(tmp_path / "out") == []


def test_mirror_that_is_not_an_export(tmp_path):
    r = run_cli("--mirror", tmp_path, "--out", tmp_path / "out")
    assert r.returncode == 1
    assert_one_error(r.stderr, "has no datasets/ folder and no fineweb_*.bin shards")


# ---------------------------------------------------------------- a local stand-in for the hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # X-Repo-Commit of error answers
TOKEN = "hf_local_test_token"


class LocalHub:
    """Serves the files under folder/<owner>/<name>/ the way the Hugging Face hub serves a dataset
    repository, to the extent hf_hub_download relies on it: HEAD and GET on
    /datasets/<owner>/<name>/resolve/main/<path>, answered with X-Repo-Commit, an ETag (the sha256
    of the content for LFS-like files, which also get X-Linked-Etag and X-Linked-Size; the git blob
    id for JSON files), Content-Length, "Range: bytes=N-" for resuming, and X-Error-Code on errors.
    (The headers are those named in huggingface_hub's file_download.py and utils/_http.py.)

    Bound to 127.0.0.1 on a free port; every connection times out after 10 s. Test knobs:
    drop_once (path -> bytes after which its first full GET is cut), etag and size (path ->
    what to announce instead of the truth). Every request is recorded in `requests`.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.requests = []  # dicts: method, path (below resolve/main/), range, authorization
        self.drop_once, self.etag, self.size = {}, {}, {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
        self.server.daemon_threads = True
        self.server.hub = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def gets(self):
        return sorted(r["path"] for r in self.requests if r["method"] == "GET")


class _HubHandler(BaseHTTPRequestHandler):
    timeout = 10  # seconds a connection may stay silent: a stuck client cannot hang the server

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(send_body=False)

    def do_GET(self):
        self.answer(send_body=True)

    def fail(self, status, code):
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def answer(self, send_body):
        hub = self.server.hub
        m = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urllib.parse.unquote(self.path))
        hub.requests.append({"method": self.command, "path": m and m[3], "range": self.headers.get("Range"),
                             "authorization": self.headers.get("Authorization")})
        if m is None or not (hub.folder / m[1]).is_dir():
            return self.fail(401, "RepoNotFound")  # the hub's answer for a missing or private repo
        if m[2] != "main":
            return self.fail(404, "RevisionNotFound")
        path = m[3]
        file = hub.folder / m[1] / path
        if not file.is_file():
            return self.fail(404, "EntryNotFound")
        data = file.read_bytes()
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if wanted and int(wanted[1]) < len(data):
            start = int(wanted[1])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", repo_commit(hub.folder / m[1]))
        if path.endswith(".json"):  # kept in git: the ETag is the git blob id
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        else:  # kept in LFS: the ETag is the sha256 of the content
            etag = hub.etag.get(path, hashlib.sha256(data).hexdigest())
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(hub.size.get(path, len(data))))
        self.send_header("ETag", f'"{etag}"')
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not send_body:
            return
        if path in hub.drop_once and start == 0:
            self.wfile.write(data[:hub.drop_once.pop(path)])
            self.wfile.flush()
            return  # HTTP/1.0: the connection closes here, the body cut short
        self.wfile.write(data[start:])


def repo_commit(repo: Path) -> str:
    """A commit id that changes whenever a file of the repository does, as the hub's does."""
    digest = hashlib.sha1()
    for path in sorted(p for p in repo.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def hub_env(hub, home, **extra):
    """The environment of a user pointing HF_ENDPOINT at the local hub, with a fresh HF_HOME."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "MATCHED_FINEWEB_")) and "proxy" not in k.lower()}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_XET="1", HF_HUB_ENABLE_HF_TRANSFER="0", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_ETAG_TIMEOUT="10", HF_HUB_DOWNLOAD_TIMEOUT="10", NO_PROXY="127.0.0.1")
    env.update(extra)
    return env


class HubCase:
    """A local hub holding the default repository (3 train shards, a manifest with sizes), the
    environment that points the script at it, and the output folder."""

    def __init__(self, tmp_path):
        self.repo = tmp_path / "hub" / cf.DEFAULT_REPO_ID
        self.export = make_export(self.repo / "datasets", n_train=3)
        self.write_manifest(sizes_manifest(self.export, 3))
        self.server = LocalHub(tmp_path / "hub")
        self.home = tmp_path / "hf_home"
        self.env = hub_env(self.server, self.home)
        self.out = tmp_path / "out"

    def write_manifest(self, manifest):
        (self.export / "manifest.json").write_text(json.dumps(manifest))

    def run(self, *args, **env):
        self.server.requests.clear()
        return subprocess.run([sys.executable, str(SCRIPT), "--out", str(self.out), *map(str, args)],
                              capture_output=True, text=True, timeout=60, env={**self.env, **env})

    def blobs(self):
        folder = self.home / "hub" / "datasets--willdepueoai--parameter-golf" / "blobs"
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture
def hub(tmp_path):
    case = HubCase(tmp_path)
    yield case
    case.server.close()


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Shards as paths in the output folder (and below the export root), and in the hub repository.
TRAIN_LOCAL = [f"{DATASET}/fineweb_train_{i:06d}.bin" for i in range(3)]
VAL_LOCAL = f"{DATASET}/fineweb_val_000000.bin"
TRAIN = [f"datasets/{path}" for path in TRAIN_LOCAL]
VAL = f"datasets/{VAL_LOCAL}"


# ---------------------------------------------------------------- hub

def test_hub_download_rerun_and_offline_reuse_of_the_cache(hub, tmp_path):
    r = hub.run("--train-shards", 2, "--workers", 3)
    assert r.returncode == 0, r.stderr
    assert hub.server.gets() == sorted(["datasets/manifest.json", f"datasets/{MODEL}", VAL, TRAIN[0], TRAIN[1]])
    assert {q["authorization"] for q in hub.server.requests} == {f"Bearer {TOKEN}"}  # HF_TOKEN is sent
    for name in ["fineweb_val_000000.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin"]:
        got, want = hub.out / DATASET / name, hub.export / DATASET / name
        assert got.read_bytes() == want.read_bytes()
        assert sha256(want) in hub.blobs() and got.stat().st_nlink == 2  # hard-linked to the HF cache blob
    assert not (hub.out / DATASET / "fineweb_train_000002.bin").exists()
    assert (hub.out / MODEL).read_bytes() == (hub.export / MODEL).read_bytes()
    assert (hub.out / "manifest.json").read_text() == (hub.export / "manifest.json").read_text()
    assert leftovers(hub.out) == [] and leftovers(hub.home) == []
    assert r.stdout.strip().splitlines() == [
        f"sp1024: 3 shards and 1 tokenizer file(s) from {hub.server.url}/datasets/{cf.DEFAULT_REPO_ID}/tree/main/"
        f"datasets in {hub.out} (4 fetched, 0 already complete)"]
    assert main(["--check", "--out", hub.out]) == 0

    # A rerun finds every file complete: the hub is asked for the manifest's metadata only.
    r = hub.run("--train-shards", 2)
    assert r.returncode == 0, r.stderr
    assert "(0 fetched, 4 already complete)" in r.stdout
    assert [(q["method"], q["path"]) for q in hub.server.requests] == [("HEAD", "datasets/manifest.json")]

    # Offline, another output folder is filled from the HF cache alone.
    hub.out = tmp_path / "out2"
    r = hub.run("--train-shards", 2, HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr
    assert hub.server.requests == []
    assert (hub.out / DATASET / "fineweb_train_000001.bin").read_bytes() == \
        (hub.export / DATASET / "fineweb_train_000001.bin").read_bytes()
    # ... and a file the cache lacks is a clear error.
    r = hub.run("--train-shards", 3, HF_HUB_OFFLINE="1")
    assert r.returncode == 1
    assert_one_error(r.stderr, "HF_HUB_OFFLINE is set", "fineweb_train_000002.bin", "not in the HF cache")


def test_hub_env_overrides_and_the_challenge_scripts_bare_count(tmp_path):
    """MATCHED_FINEWEB_REPO_ID and MATCHED_FINEWEB_REMOTE_ROOT_PREFIX, and `... --variant sp1024 1`."""
    export = make_export(tmp_path / "hub" / "someone" / "golf-copy" / "exports" / "v2", n_train=2)
    (export / "manifest.json").write_text(json.dumps(sizes_manifest(export, 2)))
    server = LocalHub(tmp_path / "hub")
    try:
        env = hub_env(server, tmp_path / "hf_home", MATCHED_FINEWEB_REPO_ID="someone/golf-copy",
                      MATCHED_FINEWEB_REMOTE_ROOT_PREFIX="exports/v2")
        r = subprocess.run([sys.executable, str(SCRIPT), "--variant", "sp1024", "1", "--out",
                            str(tmp_path / "out")], capture_output=True, text=True, timeout=60, env=env)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    assert server.gets() == sorted(f"exports/v2/{p}" for p in ["manifest.json", MODEL, VAL_LOCAL, TRAIN_LOCAL[0]])
    assert (tmp_path / "out" / TRAIN_LOCAL[0]).read_bytes() == (export / TRAIN_LOCAL[0]).read_bytes()


def test_hub_resumes_a_transfer_cut_mid_file(hub):
    # huggingface_hub writes what it receives in 10 MiB pieces, so only a cut past the first
    # piece leaves something to resume from: a shard of 5.5M tokens (11 MB), cut 4 KB short.
    shard = hub.export / TRAIN_LOCAL[0]
    shard.write_bytes(shard_bytes(np.random.default_rng(0).integers(0, 1024, 5_500_000)))
    hub.write_manifest(sizes_manifest(hub.export, 3))
    size = shard.stat().st_size
    hub.server.drop_once[TRAIN[0]] = size - 4096
    r = hub.run("--train-shards", 1)
    assert r.returncode == 0, r.stderr
    ranges = [q["range"] for q in hub.server.requests if q["method"] == "GET" and q["path"] == TRAIN[0]]
    assert len(ranges) == 2 and ranges[0] is None  # cut, then asked again for the rest only
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", ranges[1])[1])
    assert 10 * 2**20 <= resumed_at <= size - 4096
    assert (hub.out / TRAIN_LOCAL[0]).read_bytes() == shard.read_bytes()
    assert leftovers(hub.out) == []


def test_hub_file_missing(hub):
    (hub.export / DATASET / "fineweb_train_000001.bin").unlink()  # the manifest still lists it
    r = hub.run("--train-shards", 2, "--workers", 1)
    assert r.returncode == 1
    assert_one_error(r.stderr, "not found on the hub (HTTP 404)",
                     f"{hub.server.url}/datasets/{cf.DEFAULT_REPO_ID}/resolve/main/{TRAIN[1]}")
    assert not (hub.out / TRAIN_LOCAL[1]).exists() and leftovers(hub.out) == []


def test_hub_repository_missing(hub):
    r = hub.run(MATCHED_FINEWEB_REPO_ID="nobody/nothing")
    assert r.returncode == 1
    assert_one_error(r.stderr, "repository nobody/nothing not found", "HTTP 401", "HF_TOKEN")


def test_hub_wrong_size_per_manifest_is_removed_also_from_the_cache(hub):
    manifest = sizes_manifest(hub.export, 3)
    manifest["variants"]["sp1024"]["train"][0]["bytes"] += 2
    hub.write_manifest(manifest)
    r = hub.run("--train-shards", 1)
    assert r.returncode == 1
    assert_one_error(r.stderr, "fineweb_train_000000.bin", "where the manifest says", "from the HF cache")
    assert not (hub.out / TRAIN_LOCAL[0]).exists() and leftovers(hub.out) == []
    assert sha256(hub.export / DATASET / "fineweb_train_000000.bin") not in hub.blobs()

    hub.write_manifest(sizes_manifest(hub.export, 3))
    r = hub.run("--train-shards", 1)
    assert r.returncode == 0, r.stderr
    assert TRAIN[0] in hub.server.gets()  # downloaded again, not taken from the cache


def test_hub_wrong_size_announced_by_the_hub(hub):
    hub.server.size[TRAIN[0]] = (hub.export / DATASET / "fineweb_train_000000.bin").stat().st_size + 5
    r = hub.run("--train-shards", 1)
    assert r.returncode == 1
    assert_one_error(r.stderr, "fineweb_train_000000.bin", "failed validation", "Consistency check failed")
    assert not (hub.out / TRAIN_LOCAL[0]).exists() and leftovers(hub.out) == [] and leftovers(hub.home) == []


@pytest.mark.parametrize("who", ["the hub", "the manifest"])
def test_hub_wrong_checksum(hub, who):
    wrong = hashlib.sha256(b"something else").hexdigest()
    if who == "the hub":  # the bytes are not the ones the hub's ETag names
        hub.server.etag[TRAIN[0]] = wrong
    else:
        manifest = sizes_manifest(hub.export, 3)
        manifest["variants"]["sp1024"]["train"][0]["sha256"] = wrong
        hub.write_manifest(manifest)
    r = hub.run("--train-shards", 1)
    assert r.returncode == 1
    assert_one_error(r.stderr, "fineweb_train_000000.bin", "failed validation",
                     f"where {who} says {wrong[:16]}")
    assert not (hub.out / TRAIN_LOCAL[0]).exists() and leftovers(hub.out) == []
    assert not hub.blobs() & {wrong, sha256(hub.export / DATASET / "fineweb_train_000000.bin")}


def test_hub_rerun_restarts_part_and_cut_files(hub):
    (hub.out / DATASET).mkdir(parents=True)
    (hub.out / "tokenizers").mkdir()
    (hub.out / MODEL).write_bytes((hub.export / MODEL).read_bytes())
    (hub.out / VAL_LOCAL).write_bytes((hub.export / VAL_LOCAL).read_bytes())
    # An interrupted earlier run: a partial .part, and a final name holding a cut file.
    (hub.out / (TRAIN_LOCAL[0] + ".part")).write_bytes(b"\x00" * 300)
    (hub.out / TRAIN_LOCAL[1]).write_bytes((hub.export / DATASET / "fineweb_train_000001.bin").read_bytes()[:-2])
    r = hub.run("--train-shards", 2)
    assert r.returncode == 0, r.stderr
    assert hub.server.gets() == sorted(["datasets/manifest.json", TRAIN[0], TRAIN[1]])
    for i in range(2):
        assert (hub.out / TRAIN_LOCAL[i]).read_bytes() == (hub.export / TRAIN_LOCAL[i]).read_bytes()
    assert leftovers(hub.out) == []


# ---------------------------------------------------------------- which files (manifest), via a mirror

def mirror_with(tmp_path, manifest, n_train=3):
    export = make_export(tmp_path / "mirror" / "datasets", n_train=n_train)
    if manifest is not None:
        (export / "manifest.json").write_text(json.dumps(manifest(export) if callable(manifest) else manifest))
    return export


def fetched(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")


def test_selection_from_upstream_shaped_manifest(tmp_path):
    """A "datasets" list with stats counts and a tokenizer entry naming model and vocab."""
    export = mirror_with(tmp_path, {
        "datasets": [{"name": "fineweb10B_sp4096", "tokenizer_name": "sp4096",
                      "stats": {"files_val": 1, "files_train": 9}},
                     {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
                      "stats": {"files_val": 2, "files_train": 3}}],
        "tokenizers": [{"name": "sp_bpe_1024", "model_path": MODEL,
                        "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}]})
    (export / "tokenizers" / "fineweb_1024_bpe.vocab").write_text("vocab")
    (export / DATASET / "fineweb_val_000001.bin").write_bytes(shard_bytes(doc_tokens(2, 9)))
    out = tmp_path / "out"
    assert main(["--mirror", tmp_path / "mirror", "--out", out, "--train-shards", "1"]) == 0
    assert fetched(out) == sorted([MODEL, "tokenizers/fineweb_1024_bpe.vocab", VAL_LOCAL,
                                   f"{DATASET}/fineweb_val_000001.bin", TRAIN_LOCAL[0]])
    assert (out / "manifest.json").read_text() == (export / "manifest.json").read_text()  # stored


def test_selection_falls_back_to_standard_names(tmp_path, capsys):
    mirror_with(tmp_path, {"variants": {"sp4096": {"train": 5}}})
    out = tmp_path / "out"
    assert main(["--mirror", tmp_path / "mirror", "--out", out, "--train-shards", "3"]) == 0
    assert fetched(out) == sorted([MODEL, VAL_LOCAL] + TRAIN_LOCAL)
    assert "no entry for sp1024" in capsys.readouterr().err


def test_more_train_shards_than_the_manifest_lists(tmp_path, capsys):
    mirror_with(tmp_path, lambda export: sizes_manifest(export, 3))
    out = tmp_path / "out"
    assert main(["--mirror", tmp_path / "mirror", "--out", out, "--train-shards", "4"]) == 1
    assert_one_error(capsys.readouterr().err, "only 3 train shards", "asked for 4")
    assert fetched(out) == []


def test_manifest_names_cannot_leave_the_output_folder(tmp_path, capsys):
    mirror_with(tmp_path, {"variants": {"sp1024": {"val": ["../../escape.bin"]}}})
    assert main(["--mirror", tmp_path / "mirror", "--out", tmp_path / "out", "--train-shards", "0"]) == 1
    assert_one_error(capsys.readouterr().err, "bad file name")


def test_skip_manifest_uses_the_stored_one(tmp_path, capsys):
    export = mirror_with(tmp_path, {"variants": {"sp1024": {"train": 1}}})
    out = tmp_path / "out"
    out.mkdir()
    # no stored manifest: the standard names, with a warning
    assert main(["--mirror", tmp_path / "mirror", "--out", out, "--skip-manifest", "--train-shards", "2"]) == 0
    assert "--skip-manifest and no" in capsys.readouterr().err
    # a stored manifest (as a previous run leaves it) decides, not the source's
    (out / "manifest.json").write_text(json.dumps({"variants": {"sp1024": {"train": 1}}}))
    (export / "manifest.json").write_text(json.dumps({"variants": {"sp1024": {"train": 0}}}))
    assert main(["--mirror", tmp_path / "mirror", "--out", out, "--skip-manifest", "--train-shards", "2"]) == 1
    assert_one_error(capsys.readouterr().err, "only 1 train shards", "asked for 2")


def test_disk_full(tmp_path, monkeypatch, capsys):
    mirror_with(tmp_path, None, n_train=1)

    def full(source, dest, copy=False):
        dest.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cf, "link_or_copy", full)
    out = tmp_path / "out"
    assert main(["--mirror", tmp_path / "mirror", "--out", out, "--train-shards", "1"]) == 1
    assert_one_error(capsys.readouterr().err, "disk full", "free some space")
    assert fetched(out) == [] and leftovers(out) == []


def test_a_failure_elsewhere_stops_a_download_in_progress(monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(cf, "_stop", cf.threading.Event())
    bar = cf.stop_aware_bar()(total=10, disable=True)
    bar.update(1)  # carries on while nothing has failed
    cf._stop.set()  # another download failed, or Ctrl-C
    with pytest.raises(cf.Stopped):
        bar.update(1)


def test_two_different_shard_counts(tmp_path, capsys):
    assert main(["5", "--train-shards", "6", "--out", tmp_path]) == 2
    assert_one_error(capsys.readouterr().err, "two different train shard counts")

# ---------------------------------------------------------------- --check

def write_out_shards(out, shards, dataset=DATASET):
    (out / dataset).mkdir(parents=True)
    for name, data in shards.items():
        (out / dataset / name).write_bytes(data)


def test_check_good(tmp_path):
    write_out_shards(tmp_path, {"fineweb_val_000000.bin": shard_bytes(doc_tokens(4, 0)),
                                "fineweb_train_000000.bin": shard_bytes(doc_tokens(6, 1))})
    r = run_cli("--check", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"val: 1 shards, {len(doc_tokens(4, 0)):,} tokens, 4 documents" in r.stdout
    assert f"train: 1 shards, {len(doc_tokens(6, 1)):,} tokens, 6 documents" in r.stdout


def test_check_scans_across_chunks(tmp_path, monkeypatch, capsys):
    tokens = doc_tokens(50, 3)
    tokens[-1] = 1024  # only in the last chunk
    write_out_shards(tmp_path, {"fineweb_train_000000.bin": shard_bytes(tokens)})
    monkeypatch.setattr(cf, "SCAN_TOKENS", 16)
    assert main(["--check", "--out", tmp_path]) == 1
    assert f"position {len(tokens) - 1}" in capsys.readouterr().err


@pytest.mark.parametrize("data, phrase", [
    (shard_bytes(doc_tokens(3, 0))[:-4], "truncated"),
    (shard_bytes(doc_tokens(3, 0))[:100], "shorter than the 1024-byte header"),
    (shard_bytes(doc_tokens(3, 0), magic=20240521), "bad magic 20240521"),
    (shard_bytes(doc_tokens(3, 0), version=2), "unsupported version 2"),
    (shard_bytes([1, 5, 1023, 1024, 7]), "token 1024 at position 3"),
])
def test_check_bad_shard_cli(tmp_path, data, phrase):
    write_out_shards(tmp_path, {"fineweb_val_000000.bin": shard_bytes(doc_tokens(4, 0)),
                                "fineweb_train_000000.bin": data})
    r = run_cli("--check", "--out", tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1
    assert errors[0].startswith("error: bad shard ")
    assert "fineweb_train_000000.bin" in errors[0] and phrase in errors[0]
    assert "val: 1 shards" in r.stdout and "1 bad" in r.stdout


def test_check_uses_the_variant_vocabulary(tmp_path):
    write_out_shards(tmp_path, {"fineweb_train_000000.bin": shard_bytes([1, 259, 300])},
                     dataset="datasets/fineweb10B_byte260")
    write_out_shards(tmp_path, {"fineweb_train_000000.bin": shard_bytes([1, 259, 300])})
    assert run_cli("--check", "--out", tmp_path).returncode == 0  # sp1024
    r = run_cli("--check", "--variant", "byte260", "--out", tmp_path)
    assert r.returncode == 1
    assert "token 300 at position 2 is outside the vocabulary of 260" in r.stderr


def test_check_without_shards(tmp_path):
    r = run_cli("--check", "--out", tmp_path)
    assert r.returncode == 1
    assert_one_error(r.stderr, "no shards in")
