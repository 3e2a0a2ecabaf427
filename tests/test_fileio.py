"""fileio.AtomicWrite: the one atomic writer of convert, the Save node and the queue CLI. Failures
are injected: a disk that fills up (write, fsync and close raising ENOSPC), links planted where the
temporary file or the output goes, a missing folder."""
import errno
import os
import stat

import pytest

from comfyui_zimage_gguf import fileio
from comfyui_zimage_gguf.fileio import AtomicWrite, FileWriteError, write_bytes


def full_disk_file(fd):
    """The opener of a temporary file on a full disk: the file is created in its folder, but its
    descriptor now writes to /dev/full, so every write, flush and close fails with ENOSPC in the
    kernel, whatever writes to it (Python's buffered file, numpy's tofile)."""
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, fd)
    os.close(full)
    return os.fdopen(fd, "wb")


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_appears_whole_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", recording_fsync)
    assert write_bytes(tmp_path / "a.bin", b"data") == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == b"data"
    assert leftovers(tmp_path) == ["a.bin"]
    assert synced == ["file", "folder"] if hasattr(os, "O_DIRECTORY") else ["file"]


@needs_dev_full
@pytest.mark.parametrize("size", [100, 1 << 20], ids=["fails at the final flush", "fails inside the block"])
def test_full_disk_gives_one_line_and_removes_the_temporary_file_even_when_close_raises(tmp_path, monkeypatch, size):
    monkeypatch.setattr(fileio, "_open_file", full_disk_file)
    with pytest.raises(FileWriteError) as caught:
        with AtomicWrite(tmp_path / "out.gguf") as f:
            f.write(b"x" * size)
    assert str(caught.value) == f"cannot write {tmp_path / 'out.gguf'}: No space left on device (disk full?)"
    assert leftovers(tmp_path) == []


def test_fsync_failure_removes_the_temporary_file(tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fileio.os, "fsync", failing_fsync)
    with pytest.raises(FileWriteError, match="^cannot write .*out.bin: Input/output error$"):
        write_bytes(tmp_path / "out.bin", b"data")
    assert leftovers(tmp_path) == []


def test_an_error_inside_the_block_is_reraised_unchanged(tmp_path):
    with pytest.raises(KeyError):
        with AtomicWrite(tmp_path / "out.bin") as f:
            f.write(b"half")
            raise KeyError("source")
    assert leftovers(tmp_path) == []


def test_a_planted_link_at_the_temporary_name_is_never_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    names = iter(["aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(fileio.secrets, "token_hex", lambda n: next(names))
    (tmp_path / "out.gguf.aaaaaaaa.partial").symlink_to(victim)
    assert write_bytes(tmp_path / "out.gguf", b"new") == tmp_path / "out.gguf"
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "out.gguf").read_bytes() == b"new" and not (tmp_path / "out.gguf").is_symlink()
    assert os.readlink(tmp_path / "out.gguf.aaaaaaaa.partial") == str(victim)


def test_a_link_at_the_output_name_counts_as_an_existing_file(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (tmp_path / "out.gguf").symlink_to(victim)
    with pytest.raises(FileWriteError, match="^out.gguf already exists: choose another name or allow overwriting"):
        write_bytes(tmp_path / "out.gguf", b"new")
    write_bytes(tmp_path / "out.gguf", b"new", overwrite=True)  # replaces the link itself, not its target
    assert victim.read_bytes() == b"precious" and (tmp_path / "out.gguf").read_bytes() == b"new"


def test_existing_file_is_kept_or_numbered(tmp_path):
    (tmp_path / "img.png").write_bytes(b"old")
    with pytest.raises(FileWriteError):
        write_bytes(tmp_path / "img.png", b"new")
    assert write_bytes(tmp_path / "img.png", b"new", add_counter=True) == tmp_path / "img_00001.png"
    assert write_bytes(tmp_path / "img.png", b"newer", add_counter=True) == tmp_path / "img_00002.png"
    assert (tmp_path / "img.png").read_bytes() == b"old"
    assert leftovers(tmp_path) == ["img.png", "img_00001.png", "img_00002.png"]


def test_a_file_appearing_during_the_write_is_not_replaced(tmp_path):
    with pytest.raises(FileWriteError, match="already exists"):
        with AtomicWrite(tmp_path / "out.bin") as f:
            f.write(b"mine")
            (tmp_path / "out.bin").write_bytes(b"theirs")
    assert (tmp_path / "out.bin").read_bytes() == b"theirs" and leftovers(tmp_path) == ["out.bin"]


def test_missing_folder_is_one_line_naming_it(tmp_path):
    with pytest.raises(FileWriteError) as caught:
        write_bytes(tmp_path / "nope" / "out.bin", b"x")
    assert str(caught.value) == f"cannot write {tmp_path / 'nope' / 'out.bin'}: the folder {tmp_path / 'nope'} does not exist"
