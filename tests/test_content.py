"""Pushing and pulling artifacts through a local store: stored once, verified, never corrupt.

A local store remembers which content it verified a file to hold (with the file's identity and
change times) so pulls need not hash it again; these tests check that every way of changing the
file makes it checked again, and that a source changed during a push is refused."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from forgehub.artifacts.content import pull_to, push_path
from forgehub.fsutil import copy_file
from forgehub.storage import IntegrityError, InvalidKey
from forgehub.storage.blobstore import blob_key
from forgehub.storage.local import LocalConfig, LocalStorage


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(LocalConfig(path=tmp_path / "store"))


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_push_pull_and_re_push_sends_nothing(store: LocalStorage, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "weights.bin"
    src.write_bytes(data)
    first = push_path(store, src)
    assert (first.digest, first.size, first.uploaded) == (sha(data), len(data), len(data))
    assert store.known_digest(blob_key(first.digest)) == first.digest
    assert push_path(store, src).uploaded == 0
    out = tmp_path / "out.bin"
    pull_to(store, first.digest, "file", out)
    assert out.read_bytes() == data
    # the bookkeeping is not an object, and no staged copy is left behind
    assert [o.key for o in store.list("")] == [blob_key(first.digest)]
    assert list((store.root / ".forgehub" / "staging").iterdir()) == []


def _corrupt_in_place(path: Path) -> None:
    """Flip one byte, keeping the size and the modification time."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(1000)
        b = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace_by_rename(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[5] ^= 0x01
    other = path.with_name("other")
    other.write_bytes(bytes(data))
    st = path.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)


@pytest.mark.parametrize("damage", [_corrupt_in_place, _replace_by_rename])
def test_a_changed_store_file_is_verified_again(
    store: LocalStorage, tmp_path: Path, damage: object
) -> None:
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(200_000))
    digest = push_path(store, src).digest
    stored = store.local_path(blob_key(digest))
    assert stored is not None
    damage(stored)  # type: ignore[operator]
    assert store.known_digest(blob_key(digest)) is None
    out = tmp_path / "out.bin"
    with pytest.raises(IntegrityError, match="corrupted"):
        pull_to(store, digest, "file", out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fetch-")]


def test_content_stored_by_others_is_verified_once(store: LocalStorage, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    key = blob_key(sha(data))
    store.put(key, data)  # not through push: nothing known about it yet
    assert store.known_digest(key) is None
    pull_to(store, sha(data), "file", tmp_path / "a.bin")
    assert store.known_digest(key) == sha(data)  # checked once, remembered
    pull_to(store, sha(data), "file", tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == data
    # a blob whose name does not match its bytes is never remembered
    bad = blob_key(sha(b"something else"))
    store.put(bad, data)
    with pytest.raises(IntegrityError, match="corrupt|does not match"):
        pull_to(store, sha(b"something else"), "file", tmp_path / "c.bin")
    assert store.known_digest(bad) is None


def test_a_source_changed_during_a_push_is_refused(store: LocalStorage, tmp_path: Path) -> None:
    src = tmp_path / "growing.log"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    before = src.read_bytes()

    def append_once(n: int) -> None:
        if src.stat().st_size == len(before):
            with open(src, "ab") as fh:
                fh.write(b"more lines\n")

    with pytest.raises(IntegrityError, match="changed while it was being pushed"):
        push_path(store, src, progress=append_once)
    assert list(store.list("")) == []  # the mismatched blob was taken back
    again = push_path(store, src)  # once it is quiet, the push goes through
    assert again.digest == sha(src.read_bytes())


def test_a_source_changed_during_a_one_pass_push_is_refused(
    store: LocalStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pushing to a local store copies and hashes in one pass; a write meanwhile is caught."""
    import forgehub.artifacts.content as content

    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(1024 * 1024))

    def copy_then_write(source: Path, dest: Path) -> int:
        n = copy_file(source, dest)
        with open(source, "r+b") as fh:
            fh.write(b"X")  # same size, new content
        return n

    monkeypatch.setattr(content, "copy_file", copy_then_write)
    with pytest.raises(IntegrityError, match="changed while it was being pushed"):
        push_path(store, src)
    assert list(store.list("")) == []
    assert list((store.root / ".forgehub" / "staging").iterdir()) == []


def test_directory_push_checks_each_file(store: LocalStorage, tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a" * 5000)
    (root / "sub" / "b.bin").write_bytes(os.urandom(2 * 1024 * 1024))

    def touch_b(n: int) -> None:
        os.utime(root / "sub" / "b.bin", ns=(1, 1))

    with pytest.raises(IntegrityError, match="b.bin changed"):
        push_path(store, root, progress=touch_b)
    pushed = push_path(store, root)
    out = tmp_path / "copy"
    pull_to(store, pushed.digest, "dir", out)
    assert (out / "sub" / "b.bin").read_bytes() == (root / "sub" / "b.bin").read_bytes()
    assert (out / "a.txt").read_bytes() == b"a" * 5000


def test_bookkeeping_keys_are_refused(store: LocalStorage) -> None:
    for key in (".forgehub", ".forgehub/verified/x"):
        with pytest.raises(InvalidKey, match="the store's own"):
            store.put(key, b"x")


def test_copy_file_falls_back_when_the_kernel_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1_500_000))
    assert copy_file(src, tmp_path / "fast.bin") == 1_500_000
    assert (tmp_path / "fast.bin").read_bytes() == src.read_bytes()

    def unsupported(*args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    assert copy_file(src, tmp_path / "slow.bin") == 1_500_000
    assert (tmp_path / "slow.bin").read_bytes() == src.read_bytes()
    empty = tmp_path / "empty"
    empty.touch()
    assert copy_file(empty, tmp_path / "empty-copy") == 0


def test_a_folder_manifest_lists_regular_files_in_a_fixed_order(tmp_path: Path) -> None:
    """The manifest, and so a folder's digest, depends on the order of its files: a folder's
    own files by name, then each sub-folder by name. Links and special files are not in it
    (a push refuses them unless asked to follow links), and the digest is the manifest's."""
    from forgehub.artifacts.digests import build_manifest, hash_bytes, regular_files

    root = tmp_path / "t"
    for rel, body in [
        ("x", b"1"),
        ("a/y", b"2"),
        ("a/Y", b"3"),
        ("a/b/z", b"4"),
        ("B/q", b"5"),
        ("sp ace/\u00fc.txt", b"6"),
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
        (root / rel).chmod(0o644)
    (root / "empty").mkdir()
    (root / "x").chmod(0o755)
    (root / "a" / "link").symlink_to("../x")
    (root / "dirlink").symlink_to("a")
    os.mkfifo(root / "fifo")
    manifest, entries, stamps = build_manifest(root)
    assert [e.path for e in entries] == ["x", "B/q", "a/Y", "a/y", "a/b/z", "sp ace/\u00fc.txt"]
    assert [e.mode for e in entries] == [0o755] + [0o644] * 5
    assert entries[1].digest == sha(b"5") and entries[1].size == 1
    assert set(stamps) == {e.path for e in entries}
    assert manifest.startswith(b'{"files":[{"digest":"' + sha(b"1").encode())
    assert hash_bytes(manifest) == sha(manifest)
    # the push's one listing names what it must refuse, and gives the same manifest
    odd: list[str] = []
    files = regular_files(root, odd)
    assert sorted(odd) == ["a/link", "dirlink", "fifo"]
    assert build_manifest(root, files=files)[0] == manifest


def test_a_download_hashed_behind_its_reads_reuses_a_few_buffers(tmp_path: Path) -> None:
    """What the CLI's pull does with a response: each block read into one of a few reused
    buffers, written, and hashed in a thread behind. Every byte lands and the digest is the
    file's, whatever the block boundaries (odd sizes, a short last block)."""
    from forgehub.artifacts.digests import BackgroundHash

    data = os.urandom(5 * (1 << 20) + 12345)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    h = BackgroundHash()
    seen: set[int] = set()
    out = bytearray()
    with open(src, "rb", buffering=0) as fh:
        read = fh.readinto
        while block := h.readinto(read, size=300_001):
            seen.add(id(block.obj))
            out += block
    assert bytes(out) == data
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert len(seen) <= BackgroundHash.BUFFERS  # flat memory: no buffer per block
