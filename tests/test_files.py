"""Atomic, confined writes: nothing half-written, nothing outside --out."""

from __future__ import annotations

import os
import stat
import tempfile

import numpy as np
import pytest
from PIL import Image

from gradcam_cli import files
from gradcam_cli.errors import UsageError
from gradcam_cli.files import (
    check_writable_dir,
    resolve_inside,
    write_bytes_atomic,
    write_npy_atomic,
    write_png_atomic,
    write_text_atomic,
)


def leftovers(folder):
    """Temporary files a write left behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


# -- resolve_inside ------------------------------------------------------------------------


def test_resolve_inside_joins_relative_paths(tmp_path):
    assert (
        resolve_inside(tmp_path, "a/b/cat.overlay.png") == tmp_path / "a" / "b" / "cat.overlay.png"
    )
    assert resolve_inside(tmp_path, "./cat.npy") == tmp_path / "cat.npy"


@pytest.mark.parametrize(
    "relative",
    ["../x.png", "a/../../x.png", "a/../b.png", "/etc/passwd", "C:/x.png", "a\\..\\x.png", "", "."],
)
def test_resolve_inside_refuses_paths_that_leave_or_name_nothing(tmp_path, relative):
    with pytest.raises(UsageError, match="refusing to write"):
        resolve_inside(tmp_path / "out", relative)


def test_resolve_inside_refuses_symlink_pointing_outside(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UsageError, match="outside --out"):
        resolve_inside(out, "link/cat.png")


def test_resolve_inside_allows_symlink_that_stays_inside(tmp_path):
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    (out / "link").symlink_to(out / "real", target_is_directory=True)
    assert resolve_inside(out, "link/cat.png") == out / "link" / "cat.png"


# -- atomic writes -------------------------------------------------------------------------


def test_writers_create_parents_and_round_trip(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    write_npy_atomic(tmp_path / "a" / "map.npy", array)
    write_png_atomic(tmp_path / "b" / "c" / "overlay.png", image)
    write_text_atomic(tmp_path / "predictions.json", '{"label": "café"}\n')
    write_bytes_atomic(tmp_path / "raw.bin", b"\x00\x01")

    loaded = np.load(tmp_path / "a" / "map.npy", allow_pickle=False)
    assert loaded.dtype == np.float32 and np.array_equal(loaded, array)
    with Image.open(tmp_path / "b" / "c" / "overlay.png") as png:
        assert png.format == "PNG"
        assert np.array_equal(np.asarray(png), np.asarray(image))
    assert (tmp_path / "predictions.json").read_bytes() == '{"label": "café"}\n'.encode()
    assert (tmp_path / "raw.bin").read_bytes() == b"\x00\x01"
    assert leftovers(tmp_path) == []


def test_long_target_names_still_get_a_temporary_file(tmp_path):
    target = tmp_path / ("é" * 120 + ".overlay.png")  # 252 bytes: just under the 255 limit
    write_bytes_atomic(target, b"x")
    assert target.read_bytes() == b"x"


def test_write_replaces_existing_file(tmp_path):
    target = tmp_path / "x.txt"
    write_text_atomic(target, "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_new_files_get_ordinary_permissions_not_mkstemp_private(tmp_path):
    umask = os.umask(0o022)
    try:
        files._new_file_mode.cache_clear()
        write_text_atomic(tmp_path / "x.txt", "hi")
    finally:
        os.umask(umask)
        files._new_file_mode.cache_clear()
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644


def test_failure_during_write_removes_temp_and_keeps_old_file(tmp_path):
    target = tmp_path / "map.npy"
    write_text_atomic(target, "old content")
    # allow_pickle=False refuses object arrays inside np.save, i.e. half-way through the write.
    with pytest.raises(ValueError):
        write_npy_atomic(target, np.array([object()], dtype=object))
    assert target.read_text() == "old content"
    assert leftovers(tmp_path) == []


class ExplodingImage:
    """Writes part of a file, then fails, like an encoder running out of disk."""

    def save(self, handle, **kwargs):
        handle.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")


def test_failing_png_encoder_leaves_no_partial_file(tmp_path):
    with pytest.raises(OSError, match="No space left"):
        write_png_atomic(tmp_path / "overlay.png", ExplodingImage())
    assert not (tmp_path / "overlay.png").exists()
    assert leftovers(tmp_path) == []


def test_failing_rename_removes_temp(tmp_path, monkeypatch):
    seen = []

    def failing_replace(src, dst):
        seen.append(os.path.basename(src))
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        write_bytes_atomic(tmp_path / "x.png", b"data")
    # The temporary file was hidden, next to the target, and is gone now.
    assert len(seen) == 1 and seen[0].startswith(".x.png.") and seen[0].endswith(".tmp")
    assert os.listdir(tmp_path) == []


def test_interrupt_during_write_removes_temp(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(tmp_path / "x.txt", "data")
    assert os.listdir(tmp_path) == []


# -- check_writable_dir --------------------------------------------------------------------


def test_check_writable_dir_creates_nothing_and_leaves_nothing(tmp_path):
    # Issue 14 item 15: the folder is made when the run starts, not by the check.
    out = tmp_path / "a" / "b"
    check_writable_dir(out)
    assert os.listdir(tmp_path) == []
    (tmp_path / "c").mkdir()
    check_writable_dir(tmp_path / "c")
    assert os.listdir(tmp_path / "c") == []


def test_check_writable_dir_refuses_a_file(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(UsageError, match=r"out=.*out' is a file, not a directory"):
        check_writable_dir(tmp_path / "out")
    with pytest.raises(UsageError, match=r"cannot create out=.*out/sub': .*out is a file"):
        check_writable_dir(tmp_path / "out" / "sub")


def test_check_writable_dir_names_a_dangling_symlink(tmp_path):
    # Issue 14 item 15: mkdir said "file exists".
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    with pytest.raises(UsageError, match=r"is a symlink to '.*gone', which does not exist"):
        check_writable_dir(tmp_path / "out")


def test_check_writable_dir_refuses_read_only_folder(tmp_path, monkeypatch):
    # Simulated: the suite runs as root in CI, and root may write into a 0o555 folder.
    out = tmp_path / "ro"
    out.mkdir()

    def denied(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(UsageError, match="permission denied; choose another directory"):
        check_writable_dir(out)
