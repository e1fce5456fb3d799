"""Provenance: streaming hashes against hashlib on whole bytes, git state of real repositories,
bounded memory on a large file, and run_info.json as written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest

from steer.io.provenance import (
    file_digest,
    finish_run_info,
    git_state,
    package_versions,
    path_digest,
    run_info,
    sampled_digest,
    tree_digest,
    weights_identity,
    write_run_info,
)
from steer.io.secrets import MASK


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 17])
def test_file_digest_equals_hashlib_of_the_whole_bytes(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert file_digest(path, chunk=4096) == hashlib.sha256(data).hexdigest()
    assert file_digest(path) == hashlib.sha256(data).hexdigest()


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(5000), "sub/deeper/c": b"", "z.csv": b"x,y\n1,2\n"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_tree_digest_is_the_sorted_path_and_content_formula(tmp_path):
    files = make_tree(tmp_path / "t")
    expected = hashlib.sha256()
    for rel in sorted(files):
        expected.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).hexdigest().encode() + b"\n")
    assert tree_digest(tmp_path / "t") == expected.hexdigest()
    assert path_digest(tmp_path / "t") == expected.hexdigest()
    assert path_digest(tmp_path / "t" / "a.txt") == hashlib.sha256(b"alpha").hexdigest()


def test_tree_digest_sees_edits_renames_and_new_files(tmp_path):
    root = tmp_path / "t"
    make_tree(root)
    seen = {tree_digest(root)}
    (root / "a.txt").write_bytes(b"alphA")
    seen.add(tree_digest(root))
    (root / "a.txt").rename(root / "a2.txt")
    seen.add(tree_digest(root))
    (root / "new").write_bytes(b"")
    seen.add(tree_digest(root))
    assert len(seen) == 4
    with pytest.raises(FileNotFoundError, match="nothing"):
        path_digest(tmp_path / "nothing")


def test_hashing_100_mb_uses_bounded_memory(tmp_path):
    path = tmp_path / "sparse.bin"
    size = 100 * 2**20
    with open(path, "wb") as fh:
        fh.truncate(size)  # sparse: 100 MB of zeros without using the disk
    tracemalloc.start()
    try:
        start = time.perf_counter()
        digest = file_digest(path)
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    zeros = hashlib.sha256()
    block = bytes(2**20)
    for _ in range(100):
        zeros.update(block)
    assert digest == zeros.hexdigest()
    assert peak < 3 * 2**20, f"peak {peak / 2**20:.1f} MiB while hashing"
    print(f"file_digest: {size / 2**20 / seconds:.0f} MiB/s, traced peak {peak / 2**20:.2f} MiB")


def test_sampled_digest_covers_size_head_and_tail(tmp_path):
    sample = 1024
    data = bytearray(os.urandom(10 * sample))
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    expected = hashlib.sha256(str(len(data)).encode() + b"\n" + data[:sample] + data[-sample:]).hexdigest()
    assert sampled_digest(path, sample=sample) == expected
    short = tmp_path / "short"
    short.write_bytes(data[:100])
    assert sampled_digest(short, sample=sample) == hashlib.sha256(b"100\n" + data[:100]).hexdigest()
    data[-1] ^= 1  # the tail changes the identity, the middle does not
    path.write_bytes(data)
    assert sampled_digest(path, sample=sample) != expected


def test_weights_identity_of_a_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "tokenizer.json").write_text("{}")
    ident = weights_identity(str(folder))
    assert set(ident["files"]) == {"config.json", "model.safetensors"}  # the tokenizer is not weights
    assert ident["files"]["model.safetensors"]["sha256"] == sampled_digest(folder / "model.safetensors")
    full = weights_identity(str(folder), full=True)
    assert full["files"]["model.safetensors"]["sha256"] == file_digest(folder / "model.safetensors")
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    assert weights_identity(str(folder))["digest"] != ident["digest"]
    assert weights_identity("no-such-org/no-such-model-xyz")["digest"] is None


def test_weights_identity_of_a_hub_snapshot_records_its_revision(tmp_path):
    snapshot = tmp_path / "models--org--m" / "snapshots" / ("ab" * 20)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"w" * 100)
    ident = weights_identity("org/m", resolved=snapshot)
    assert ident["revision"] == "ab" * 20 and ident["source"] == "org/m"


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.e2e
def test_git_state_clean_dirty_and_outside(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "f.py").write_text("x = 1\n")
    git(repo, "add", "f.py")
    git(repo, "commit", "-qm", "first")
    head = git(repo, "rev-parse", "HEAD")
    assert git_state(repo) == {"commit": head, "dirty": False, "branch": git(repo, "rev-parse", "--abbrev-ref", "HEAD")}
    (repo / "f.py").write_text("x = 2\n")
    assert git_state(repo)["dirty"] is True
    git(repo, "checkout", "-q", "f.py")
    (repo / "new.py").write_text("")  # an untracked source file changes what runs, too
    assert git_state(repo)["dirty"] is True
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_state(outside) is None


def test_package_versions_are_read_without_import():
    versions = package_versions(["torch", "pandas", "surely-not-installed-pkg"])
    assert versions["surely-not-installed-pkg"] is None
    import pandas

    assert versions["pandas"] == pandas.__version__


def test_run_info_records_everything_and_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-value-123")
    data = tmp_path / "data.jsonl"
    data.write_text('{"q": 1}\n')
    folder = tmp_path / "bipo"
    make_tree(folder)
    argv = ["run.py", "judge.api_key=sk-typed", "note=wandb-secret-value-123", "seed=3"]
    info = run_info(seed=3, model={"source": "m", "digest": "d"}, data_files=[data, folder], argv=argv)
    assert info["command"] == ["run.py", f"judge.api_key={MASK}", f"note={MASK}", "seed=3"]
    assert info["data"][str(data)] == {"sha256": hashlib.sha256(b'{"q": 1}\n').hexdigest(), "bytes": 9, "kind": "file"}
    assert info["data"][str(folder)]["sha256"] == tree_digest(folder)
    assert info["packages"]["torch"] and info["packages"]["steer"]
    assert info["seed"] == 3 and info["ended"] is None and info["model"]["digest"] == "d"
    assert set(info["host"]) >= {"hostname", "platform", "python", "cpus", "device"}
    assert info["git"] is None or len(info["git"]["commit"]) == 40
    path = tmp_path / "run" / "run_info.json"
    write_run_info(path, info)
    done = finish_run_info(path, status="interrupted")
    assert json.loads(path.read_text()) == done
    assert done["status"] == "interrupted" and done["ended"] >= done["started"]
    assert "sk-typed" not in path.read_text() and "wandb-secret-value-123" not in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["run_info.json"]  # no temporary file left
