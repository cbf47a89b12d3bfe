"""Unpacking a folder's tar (a push on the server, a pull in the CLI): what it writes is the
folder and nothing else, every file checked when its digest is known; links, devices, paths out
of the folder, names used twice and too many bytes are refused, from a stream as from a file."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from forgehub.artifacts.untar import Refused, TooLarge, member_path, unpack


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **kw: object):  # type: ignore[no-untyped-def]
    m = tarfile.TarInfo(name)
    m.type, m.size, m.mtime, m.mode = kind, len(data) if kind == tarfile.REGTYPE else 0, 1e9, 0o644
    for k, v in kw.items():
        setattr(m, k, v)
    return m, data


def tar(*members: tuple[tarfile.TarInfo, bytes], mode: str = "w") -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for m, data in members:
            tf.addfile(m, io.BytesIO(data) if m.isfile() else None)
    buf.seek(0)
    return buf


class Trickle(io.RawIOBase):
    """A stream that hands out a few bytes at a time and cannot seek (an HTTP body)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), 777, len(self.data) - self.at)
        b[:n] = self.data[self.at : self.at + n]
        self.at += n
        return n


def test_a_folder_unpacks_whole_from_a_stream_with_its_modes_and_times(tmp_path: Path) -> None:
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(70_000), "sub/deep/c": b""}
    body = tar(
        member("sub", kind=tarfile.DIRTYPE),
        *(member(p, d) for p, d in files.items()),
        member("run.sh", b"#!/bin/sh\n", mode=0o4775),  # setuid and group-write dropped
        mode="w:gz",
    )
    dest = tmp_path / "out"
    dest.mkdir()
    expected = {**{p: sha(d) for p, d in files.items()}, "run.sh": sha(b"#!/bin/sh\n")}
    stream = io.BufferedReader(Trickle(body.getvalue()))
    assert unpack(stream, dest, expected=expected) == 4
    for p, d in files.items():
        assert (dest / p).read_bytes() == d
        assert (dest / p).stat().st_mtime == 1e9
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "a.txt").stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ([member("../../escape.txt", b"x")], "outside the folder"),
        ([member("/etc/cron.d/x", b"x")], "outside the folder"),
        ([member("a/../../x", b"x")], "outside the folder"),
        ([member("link", kind=tarfile.SYMTYPE, linkname="/etc")], "links"),
        ([member("hard", kind=tarfile.LNKTYPE, linkname="/etc/passwd")], "links"),
        ([member("dev", kind=tarfile.CHRTYPE)], "only files and folders"),
        ([member("fifo", kind=tarfile.FIFOTYPE)], "only files and folders"),
        ([member("twice", b"1"), member("twice", b"2")], "named twice"),
        ([member("a", b"1"), member("a/b", b"2")], "both a file and a folder"),
        ([member("a/b", b"1"), member("a", b"2")], "named twice"),
        ([member("ok", b"1"), member("x\\..\\y", b"2")], "portable"),
    ],
)
def test_what_could_write_outside_or_replace_a_file_is_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], words: str
) -> None:
    """The attack: a tar from a hostile client (a push) or server (a pull) that writes beside
    the folder, through a link it planted, or over a file it already wrote."""
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(Refused, match=words):
        unpack(tar(*members), dest)
    outside = {p.name for p in tmp_path.iterdir()} - {"out"}
    assert outside == set()  # nothing beside the folder
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_a_file_that_differs_from_its_digest_or_is_unexpected_or_missing_is_refused(
    tmp_path: Path,
) -> None:
    for members, expected, words in [
        ([member("a", b"evil")], {"a": sha(b"good")}, "does not match"),
        ([member("a", b"x"), member("extra", b"y")], {"a": sha(b"x")}, "not a file of"),
        ([member("a", b"x")], {"a": sha(b"x"), "b": sha(b"y")}, "b is missing"),
    ]:
        dest = tmp_path / f"out-{words[:3]}"
        dest.mkdir()
        with pytest.raises(Refused, match=words):
            unpack(tar(*members), dest, expected=expected)


def test_the_limit_counts_the_unpacked_bytes_not_the_compressed_ones(tmp_path: Path) -> None:
    body = tar(member("zeros", bytes(300_000)), mode="w:gz")
    assert len(body.getvalue()) < 10_000
    with pytest.raises(TooLarge):
        unpack(body, tmp_path, limit=100_000)
    assert not (tmp_path / "zeros").exists()  # refused before a byte of it was written


def test_not_a_tar_is_refused_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(Refused, match="not a valid tar"):
        unpack(io.BytesIO(b"this is not a tar archive at all" * 40), tmp_path)


def test_member_paths_are_normalised_inside_the_folder() -> None:
    assert member_path("./a/./b") == "a/b"
    assert member_path(".") == ""
    for bad in ("../a", "/a", "a/../../b", "a\x00b"):
        with pytest.raises(Refused):
            member_path(bad)
