"""Tests for data/cached_challenge_fineweb.py on tiny shards; no network is used."""
import errno
import importlib.util
import io
import json
import subprocess
import sys
import urllib.error
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
    """Run the script's main() in this process (so fetch_remote can be faked)."""
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


class FakeHub:
    """Stands in for fetch_remote: serves a hub-shaped folder and records what was asked."""

    def __init__(self, repo_dir, fail=None):
        self.repo_dir = repo_dir
        self.fail = fail or {}  # repo path -> exception to raise after writing a few bytes
        self.asked = []

    def __call__(self, repo_path, dest):
        self.asked.append(repo_path)
        if repo_path in self.fail:
            dest.write_bytes(b"partial")
            raise self.fail[repo_path]
        source = self.repo_dir / repo_path
        if not source.is_file():
            raise urllib.error.HTTPError(f"{cf.HUB_URL}/{repo_path}", 404, "Not Found", {}, None)
        dest.write_bytes(source.read_bytes())


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake hub repository with three train shards, and the output folder."""
    export = make_export(tmp_path / "repo" / cf.HUB_ROOT, n_train=3)
    (export / "manifest.json").write_text(json.dumps(sizes_manifest(export, 3)))
    fake = FakeHub(tmp_path / "repo")
    monkeypatch.setattr(cf, "fetch_remote", fake)
    return fake, export, tmp_path / "out"


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
    assert_one_error(r.stderr, "has no datasets/ folder")


# ---------------------------------------------------------------- hub file selection

def test_hub_selection_from_sized_manifest(hub):
    fake, export, out = hub
    assert main(["--out", out, "--train-shards", "2", "--workers", "3"]) == 0
    assert sorted(fake.asked) == sorted([
        "datasets/manifest.json",
        f"datasets/{MODEL}",
        f"datasets/{DATASET}/fineweb_val_000000.bin",
        f"datasets/{DATASET}/fineweb_train_000000.bin",
        f"datasets/{DATASET}/fineweb_train_000001.bin",
    ])
    assert (out / DATASET / "fineweb_train_000001.bin").read_bytes() == \
        (export / DATASET / "fineweb_train_000001.bin").read_bytes()


def test_hub_selection_from_upstream_shaped_manifest(hub):
    """A "datasets" list with stats counts and a tokenizer entry naming model and vocab."""
    fake, export, out = hub
    (export / "tokenizers" / "fineweb_1024_bpe.vocab").write_text("vocab")
    (export / DATASET / "fineweb_val_000001.bin").write_bytes(shard_bytes(doc_tokens(2, 9)))
    (export / "manifest.json").write_text(json.dumps({
        "datasets": [{"name": "fineweb10B_sp4096", "tokenizer_name": "sp4096",
                      "stats": {"files_val": 1, "files_train": 9}},
                     {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
                      "stats": {"files_val": 2, "files_train": 3}}],
        "tokenizers": [{"name": "sp_bpe_1024", "model_path": MODEL,
                        "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}],
    }))
    assert main(["--out", out, "--train-shards", "1"]) == 0
    assert sorted(fake.asked) == sorted([
        "datasets/manifest.json",
        f"datasets/{MODEL}",
        "datasets/tokenizers/fineweb_1024_bpe.vocab",
        f"datasets/{DATASET}/fineweb_val_000000.bin",
        f"datasets/{DATASET}/fineweb_val_000001.bin",  # the manifest's count, not the default 1
        f"datasets/{DATASET}/fineweb_train_000000.bin",
    ])


def test_hub_manifest_without_the_variant_falls_back_to_standard_names(hub, capsys):
    fake, export, out = hub
    (export / "manifest.json").write_text(json.dumps({"variants": {"sp4096": {"train": 5}}}))
    assert main(["--out", out, "--train-shards", "3"]) == 0
    assert sorted(fake.asked) == sorted(
        ["datasets/manifest.json", f"datasets/{MODEL}", f"datasets/{DATASET}/fineweb_val_000000.bin"]
        + [f"datasets/{DATASET}/fineweb_train_{i:06d}.bin" for i in range(3)])
    assert "no entry for sp1024" in capsys.readouterr().err


def test_hub_more_train_shards_than_the_manifest_lists(hub, capsys):
    fake, _, out = hub
    assert main(["--out", out, "--train-shards", "4"]) == 1
    assert_one_error(capsys.readouterr().err, "only 3 train shards", "asked for 4")
    assert fake.asked == ["datasets/manifest.json"]


def test_manifest_names_cannot_leave_the_output_folder(hub, capsys):
    _, export, out = hub
    (export / "manifest.json").write_text(json.dumps(
        {"variants": {"sp1024": {"val": ["../../escape.bin"]}}}))
    assert main(["--out", out, "--train-shards", "0"]) == 1
    assert_one_error(capsys.readouterr().err, "bad file name")


def test_fetch_remote_builds_the_resolve_url(tmp_path, monkeypatch):
    asked = []

    def fake_urlopen(url, timeout):
        asked.append(url)
        return io.BytesIO(b"payload")

    monkeypatch.setattr(cf.urllib.request, "urlopen", fake_urlopen)
    cf.fetch_remote("datasets/manifest.json", tmp_path / "m.json")
    assert asked == ["https://huggingface.co/datasets/willdepueoai/parameter-golf"
                     "/resolve/main/datasets/manifest.json"]
    assert (tmp_path / "m.json").read_bytes() == b"payload"


# ---------------------------------------------------------------- resume

def test_resume_restarts_part_and_skips_complete(hub):
    fake, export, out = hub
    (out / DATASET).mkdir(parents=True)
    (out / "tokenizers").mkdir()
    (out / MODEL).write_bytes((export / MODEL).read_bytes())
    val = out / DATASET / "fineweb_val_000000.bin"
    val.write_bytes((export / DATASET / "fineweb_val_000000.bin").read_bytes())
    # An interrupted earlier run: a partial .part, and a final name holding a cut file.
    (out / DATASET / "fineweb_train_000000.bin.part").write_bytes(b"\x00" * 300)
    cut = out / DATASET / "fineweb_train_000001.bin"
    cut.write_bytes((export / DATASET / "fineweb_train_000001.bin").read_bytes()[:-2])

    assert main(["--out", out, "--train-shards", "2"]) == 0
    assert sorted(fake.asked) == sorted([
        "datasets/manifest.json",
        f"datasets/{DATASET}/fineweb_train_000000.bin",
        f"datasets/{DATASET}/fineweb_train_000001.bin",
    ])
    for name in ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]:
        assert (out / DATASET / name).read_bytes() == (export / DATASET / name).read_bytes()
    assert leftovers(out) == []

    # Everything is in place now: a second run fetches nothing but the manifest.
    fake.asked.clear()
    assert main(["--out", out, "--train-shards", "2"]) == 0
    assert fake.asked == ["datasets/manifest.json"]


def test_failed_run_resumes_cleanly(hub, capsys):
    fake, export, out = hub
    broken = f"datasets/{DATASET}/fineweb_train_000001.bin"
    fake.fail[broken] = urllib.error.URLError(ConnectionResetError("reset by peer"))
    assert main(["--out", out, "--train-shards", "2", "--workers", "1"]) == 1
    assert leftovers(out) == []
    assert not (out / DATASET / "fineweb_train_000001.bin").exists()

    del fake.fail[broken]
    fake.asked.clear()
    assert main(["--out", out, "--train-shards", "2"]) == 0
    assert broken in fake.asked
    assert main(["--check", "--out", out]) == 0


# ---------------------------------------------------------------- failures

TRAIN0 = f"datasets/{DATASET}/fineweb_train_000000.bin"


@pytest.mark.parametrize("exc, phrases", [
    (urllib.error.URLError(ConnectionRefusedError("Connection refused")),
     ["network failure", "fineweb_train_000000.bin", "Connection refused"]),
    (TimeoutError("timed out"), ["network failure", "timed out"]),
    (urllib.error.HTTPError("u", 404, "Not Found", {}, None),
     ["not found on the hub (HTTP 404)", "fineweb_train_000000.bin"]),
    (urllib.error.HTTPError("u", 401, "Unauthorized", {}, None),
     ["not found on the hub (HTTP 401)", "willdepueoai/parameter-golf"]),
    (OSError(errno.ENOSPC, "No space left on device"),
     ["disk full", "fineweb_train_000000.bin"]),
])
def test_fetch_failures(hub, capsys, exc, phrases):
    fake, _, out = hub
    fake.fail[TRAIN0] = exc
    assert main(["--out", out, "--train-shards", "1"]) == 1
    assert_one_error(capsys.readouterr().err, *phrases)
    assert not (out / DATASET / "fineweb_train_000000.bin").exists()
    assert leftovers(out) == []


def test_repository_not_found(hub, capsys):
    fake, _, out = hub
    fake.repo_dir = fake.repo_dir / "missing"  # every path now answers 404
    assert main(["--out", out]) == 1
    assert_one_error(capsys.readouterr().err, "not found on the hub", "datasets/manifest.json")


@pytest.mark.parametrize("damage, phrase", [
    (lambda b: b[:-7], "truncated"),
    (lambda b: b[:cf.HEADER_BYTES] + np.array([5000], "<u2").tobytes() + b[cf.HEADER_BYTES + 2:],
     "outside the vocabulary of 1024"),
])
def test_corrupt_download_is_removed(hub, capsys, damage, phrase):
    fake, export, out = hub
    shard = export / DATASET / "fineweb_train_000000.bin"
    shard.write_bytes(damage(shard.read_bytes()))
    # Drop the manifest's sizes so the shard's own validation is what catches it.
    (export / "manifest.json").write_text(json.dumps({"variants": {"sp1024": {"train": 3}}}))
    assert main(["--out", out, "--train-shards", "1"]) == 1
    assert_one_error(capsys.readouterr().err, "fineweb_train_000000.bin", "failed validation", phrase)
    assert not (out / DATASET / "fineweb_train_000000.bin").exists()
    assert leftovers(out) == []


def test_download_of_the_wrong_size_per_manifest_is_removed(hub, capsys):
    fake, export, out = hub
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["variants"]["sp1024"]["train"][0]["bytes"] += 2
    (export / "manifest.json").write_text(json.dumps(manifest))
    assert main(["--out", out, "--train-shards", "1"]) == 1
    assert_one_error(capsys.readouterr().err, "fineweb_train_000000.bin", "where the manifest says")
    assert not (out / DATASET / "fineweb_train_000000.bin").exists()


def test_unknown_variant_cli(tmp_path):
    r = run_cli("--variant", "sp999", "--out", tmp_path)
    assert r.returncode == 2
    assert_one_error(r.stderr, "unknown variant 'sp999'", "sp1024")
    assert r.stderr.count("\n") == 1


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
