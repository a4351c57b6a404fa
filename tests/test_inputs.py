"""Finding inputs (files, folders, globs, stdin), decoding them the way a viewer shows them,
and sharing them out between processes (--shard)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import unicodedata
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from special_files import bound_socket, iccp_bomb, png_with_chunk, tiff_with_samples

from gradcam_cli.errors import ImageReadError, UsageError
from gradcam_cli.inputs import (
    IMAGE_EXTENSIONS,
    InputItem,
    collect_inputs,
    load_image,
    parse_shard,
    select_shard,
    shard_of,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def make_image(path: Path, colour=RED, size=(8, 6), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def sources(items: list[InputItem]) -> list[str]:
    return [item.source for item in items]


def keys(items: list[InputItem]) -> list[str]:
    return [item.key for item in items]


def close(pixel, expected, tolerance=8) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected, strict=True))


# -- collect_inputs: folders ---------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "photos"
    make_image(root / "b.png")
    make_image(root / "a.jpg")
    make_image(root / "sub" / "c.JPG")
    make_image(root / "sub" / "deeper" / "d.webp")
    make_image(root / ".hidden.png")
    make_image(root / ".git" / "x.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_is_searched_recursively_sorted_skipping_hidden_and_non_images(tree):
    items = collect_inputs([str(tree)])
    assert sources(items) == [
        str(tree / "a.jpg"),
        str(tree / "b.png"),
        str(tree / "sub" / "c.JPG"),
        str(tree / "sub" / "deeper" / "d.webp"),
    ]
    assert keys(items) == ["a", "b", "sub/c", "sub/deeper/d"]
    assert all(item.error is None and item.path.is_file() for item in items)


def test_same_name_in_two_subfolders_keeps_folders_in_keys(tmp_path):
    make_image(tmp_path / "in" / "a" / "cat.jpg")
    make_image(tmp_path / "in" / "b" / "cat.jpg")
    assert keys(collect_inputs([str(tmp_path / "in")])) == ["a/cat", "b/cat"]


def test_symlink_loop_in_folder_does_not_hang(tmp_path):
    root = tmp_path / "root"
    make_image(root / "sub" / "cat.png")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    items = collect_inputs([str(root)])
    assert keys(items) == ["sub/cat"]


def test_folder_named_like_an_image_is_an_error_only_when_it_holds_no_images(tmp_path):
    root = tmp_path / "root"
    (root / "empty.jpg").mkdir(parents=True)
    make_image(root / "album.png" / "inside.png")
    (root / "linked.jpg").symlink_to(root / "album.png", target_is_directory=True)  # not entered
    items = collect_inputs([str(root)])
    assert [(item.key, item.error) for item in items] == [
        ("album.png/inside", None),
        ("empty", "is a directory, not an image (and holds no images)"),
    ]
    [item] = collect_inputs([str(root / "empty.jpg")])  # named on the command line
    assert item.error == "is a directory, not an image (and holds no images)"


def test_symlink_to_file_in_folder_is_found(tmp_path):
    target = make_image(tmp_path / "elsewhere" / "dog.png")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "dog-link.png").symlink_to(target)
    assert keys(collect_inputs([str(tmp_path / "in")])) == ["dog-link"]


# -- collect_inputs: files, globs, stdin, missing ------------------------------------------


def test_explicit_file_is_taken_whatever_its_extension(tree):
    items = collect_inputs([str(tree / "notes.txt")])
    assert items == [InputItem(str(tree / "notes.txt"), tree / "notes.txt", "notes")]


def test_glob_matches_images_sorted_and_expands_folders(tree):
    assert sources(collect_inputs([str(tree / "*")])) == [
        str(tree / "a.jpg"),
        str(tree / "b.png"),
        str(tree / "sub" / "c.JPG"),
        str(tree / "sub" / "deeper" / "d.webp"),
    ]
    # A folder matched by a glob keeps its own name in the keys.
    assert keys(collect_inputs([str(tree / "s*")])) == ["sub/c", "sub/deeper/d"]


def test_recursive_glob_skips_non_images_and_hidden(tree):
    items = collect_inputs([str(tree / "**" / "*.*")])
    assert sorted(keys(items)) == ["a", "b", "c", "d"]
    assert not any("hidden" in s or ".git" in s or s.endswith(".txt") for s in sources(items))


def test_glob_that_matches_nothing_adds_nothing(tree):
    items = collect_inputs([str(tree / "a.jpg"), str(tree / "*.gif")])
    assert keys(items) == ["a"]


def test_stdin_paths_and_folders(tree):
    stdin = io.StringIO(f"{tree / 'b.png'}\n\n   {tree / 'sub'}  \n")
    items = collect_inputs([str(tree / "a.jpg"), "-"], stdin=stdin)
    assert sources(items) == [
        str(tree / "a.jpg"),
        str(tree / "b.png"),
        str(tree / "sub" / "c.JPG"),
        str(tree / "sub" / "deeper" / "d.webp"),
    ]
    assert keys(items) == ["a", "b", "c", "deeper/d"]


def test_dash_reads_sys_stdin_by_default(tree, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{tree / 'a.jpg'}\n"))
    assert keys(collect_inputs(["-"])) == ["a"]


def test_dash_line_on_stdin_is_a_file_name_not_another_read(tmp_path):
    items = collect_inputs(["-"], stdin=io.StringIO("-\n"))
    assert [(item.source, item.error) for item in items] == [("-", "no such file or directory")]


def test_missing_path_becomes_an_item_with_error(tree):
    items = collect_inputs([str(tree / "a.jpg"), str(tree / "nope.jpg")])
    assert items[1] == InputItem(
        str(tree / "nope.jpg"), tree / "nope.jpg", "nope", "no such file or directory"
    )
    assert items[0].error is None


def test_symlink_loop_given_as_argument_says_why(tmp_path):
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (item,) = collect_inputs([str(tmp_path / "loop.jpg")])
    assert item.error == "too many levels of symbolic links"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_special_file_is_an_error_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    (item,) = collect_inputs([str(tmp_path / "pipe.jpg")])
    assert item.error == "not a regular file: a named pipe (FIFO)"


def test_same_file_reached_twice_is_listed_once(tree, tmp_path):
    (tmp_path / "alias.jpg").symlink_to(tree / "a.jpg")
    args = [str(tree / "a.jpg"), str(tree), str(tree / "a.jpg"), str(tmp_path / "alias.jpg")]
    items = collect_inputs(args)
    assert sources(items) == [
        str(tree / "a.jpg"),
        str(tree / "b.png"),
        str(tree / "sub" / "c.JPG"),
        str(tree / "sub" / "deeper" / "d.webp"),
    ]


@pytest.mark.parametrize(
    "make_args", [lambda d: [], lambda d: [str(d)], lambda d: [str(d / "*.png")]]
)
def test_nothing_found_is_a_usage_error(tmp_path, make_args):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no input images found in .*; give image files"):
        collect_inputs(make_args(tmp_path / "empty"))


# -- keys ----------------------------------------------------------------------------------


def test_same_stem_gets_numbered_suffix_in_order(tmp_path):
    args = [make_image(tmp_path / "cat.jpg"), make_image(tmp_path / "cat.png")]
    args.append(make_image(tmp_path / "other" / "cat.jpg"))
    assert keys(collect_inputs([str(a) for a in args])) == ["cat", "cat-2", "cat-3"]


def test_key_collisions_are_case_insensitive_and_avoid_generated_keys(tmp_path):
    args = [make_image(tmp_path / "Cat.jpg"), make_image(tmp_path / "cat.png")]
    args.append(make_image(tmp_path / "cat-2.jpg"))
    assert keys(collect_inputs([str(a) for a in args])) == ["Cat", "cat-2", "cat-2-2"]


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("-rf.jpg", "_rf"),
        (".secret.jpg", "_secret"),
        ("café au lait.jpg", "café_au_lait"),
        ("猫 (1).png", "猫__1_"),
        ("a:b*?.png", "a_b__"),
        ("..png", "_"),  # stem '.' must not become a path component meaning 'here'
    ],
)
def test_keys_are_sanitised(tmp_path, name, key):
    path = make_image(tmp_path / name, fmt="PNG")
    assert keys(collect_inputs([str(path)])) == [key]


def test_decomposed_unicode_gives_the_composed_key(tmp_path):
    name = unicodedata.normalize("NFD", "café.png")
    path = make_image(tmp_path / name)
    assert keys(collect_inputs([str(path)])) == ["café"]


def test_folder_components_are_sanitised_too(tmp_path):
    make_image(tmp_path / "in" / "-x y" / "cat.png")
    assert keys(collect_inputs([str(tmp_path / "in")])) == ["_x_y/cat"]


def test_very_long_names_are_shortened(tmp_path):
    path = make_image(tmp_path / ("é" * 120 + ".png"))
    (key,) = keys(collect_inputs([str(path)]))
    assert key == "é" * 100 and len(key.encode()) == 200


# -- load_image: formats and modes ---------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".png", ".webp", ".bmp", ".tif", ".tiff"])
def test_every_listed_extension_decodes_to_rgb(tmp_path, suffix):
    assert suffix.lower() in IMAGE_EXTENSIONS
    path = make_image(tmp_path / f"x{suffix}", colour=(200, 30, 60), size=(10, 7))
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (10, 7)
    assert close(image.getpixel((5, 3)), (200, 30, 60))


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [("L", 77, (77, 77, 77)), ("1", 1, WHITE), ("CMYK", (0, 255, 255, 0), RED)],
)
def test_other_modes_convert_to_rgb(tmp_path, mode, colour, expected):
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    Image.new(mode, (8, 8), colour).save(path)
    with Image.open(path) as raw:
        assert raw.mode == mode  # the file really holds that mode
    image = load_image(path)
    assert image.mode == "RGB" and close(image.getpixel((4, 4)), expected)


def test_palette_colours_are_kept(tmp_path):
    palette_image = Image.new("RGB", (4, 2), BLUE)
    palette_image.paste(RED, (0, 0, 2, 2))
    palette_image.convert("P").save(tmp_path / "p.png")
    image = load_image(tmp_path / "p.png")
    assert image.getpixel((0, 0)) == RED and image.getpixel((3, 1)) == BLUE


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)  # transparent black everywhere
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 128)  # half-transparent black
    Image.fromarray(rgba).save(tmp_path / "t.png")
    image = load_image(tmp_path / "t.png")
    assert image.getpixel((0, 0)) == RED
    assert close(image.getpixel((1, 0)), (127, 127, 127), tolerance=1)
    assert image.getpixel((2, 1)) == WHITE  # stored as black; a viewer shows white


def test_grey_with_alpha_and_palette_transparency_become_white(tmp_path):
    Image.new("LA", (2, 2), (0, 0)).save(tmp_path / "la.png")
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.save(tmp_path / "p.png", transparency=0)
    assert load_image(tmp_path / "la.png").getpixel((1, 1)) == WHITE
    assert load_image(tmp_path / "p.png").getpixel((1, 1)) == WHITE


SIXTEEN_BIT = np.array([[65535, 32768], [0, 257]], dtype=np.uint16)


@pytest.mark.parametrize(
    ("name", "mode"), [("x16.png", "I;16"), ("x16b.tif", "I;16B"), ("x32.tif", "I")]
)
def test_sixteen_bit_is_scaled_not_clipped(tmp_path, name, mode):
    if mode == "I;16B":
        source = Image.frombytes(mode, (2, 2), SIXTEEN_BIT.astype(">u2").tobytes())
    else:
        dtype = np.int32 if mode == "I" else np.uint16
        source = Image.fromarray(SIXTEEN_BIT.astype(dtype))
    source.save(tmp_path / name)
    with Image.open(tmp_path / name) as raw:
        assert raw.mode == mode
    grey = np.asarray(load_image(tmp_path / name))[..., 0]
    # 65535 -> 255 and 32768 -> 128 (Pillow's own convert would make 257 and 32768 both 255).
    assert grey.tolist() == [[255, 128], [0, 1]]


def test_float_image_is_scaled_by_its_max(tmp_path):
    Image.fromarray(np.array([[0.0, 2.0], [4.0, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    Image.fromarray(np.zeros((2, 2), dtype=np.float32)).save(tmp_path / "zero.tif")
    assert np.asarray(load_image(tmp_path / "f.tif"))[..., 0].tolist() == [[0, 128], [255, 64]]
    assert np.asarray(load_image(tmp_path / "zero.tif")).max() == 0


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 10, 10))  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "rotated.jpg")
    assert image.size == (20, 40)
    # Rotated clockwise, the stored top-left corner is now the top-right one.
    assert close(image.getpixel((17, 2)), RED, tolerance=30)
    assert close(image.getpixel((2, 2)), BLUE, tolerance=30)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_image_gives_first_frame(tmp_path, fmt):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    path = tmp_path / f"anim.{fmt.lower()}"
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, **extra)
    with Image.open(path) as raw:
        assert getattr(raw, "n_frames", 1) == 2
    image = load_image(path)
    assert image.mode == "RGB" and close(image.getpixel((4, 4)), RED)


# -- load_image: failures ------------------------------------------------------------------


def _truncated(tmp_path, fmt):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_fails_at_load(tmp_path, fmt):
    path = _truncated(tmp_path, fmt)
    with pytest.raises(
        ImageReadError, match=rf"^cannot read .*cut\.{fmt.lower()}: truncated"
    ) as err:
        load_image(path)
    assert "\n" not in str(err.value) and isinstance(err.value.__cause__, OSError)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("text", "a text file, not an image"),
        ("html", "an HTML page, not an image"),
        ("empty", r"empty file \(0 bytes\)"),
        ("binary", r"not an image format Pillow can decode \(unknown file signature\)"),
        ("folder", "is a directory"),
        ("missing", "no such file or directory"),
    ],
)
def test_unreadable_inputs_raise_one_line_reason(tmp_path, kind, reason):
    path = tmp_path / "photo.jpg"
    if kind == "text":
        path.write_text("hello, not a JPEG")
    elif kind == "html":
        path.write_text("<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(ImageReadError, match=f"^cannot read .*photo.jpg: {reason}"):
        load_image(path)


def test_unreadable_permissions(tmp_path, monkeypatch):
    # Simulated: the suite runs as root in CI, and root can read a file with mode 0.
    path = make_image(tmp_path / "x.png")

    def denied(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ImageReadError, match="permission denied"):
        load_image(path)


def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch):
    path = make_image(tmp_path / "big.png", size=(30, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageReadError, match=r"image too large: 900 pixels.*bomb guard"):
        load_image(path)


def test_images_between_the_pixel_limit_and_twice_it_are_refused_too(tmp_path, monkeypatch):
    # Pillow only warns up to twice MAX_IMAGE_PIXELS, then decodes: gigabytes for a photo
    # of 90-179 million pixels, drawn at full size. The README promises a refusal from the limit.
    path = make_image(tmp_path / "big.png", size=(15, 10))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageReadError, match=r"too large: 150 pixels, over the 100-pixel"):
            load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # at the limit: explained
    assert load_image(path).size == (15, 10)


def test_corrupt_data_after_valid_header_is_an_image_read_error(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), RED).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[60:80] = b"\xff" * 20  # inside the image data chunk
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"^cannot read .*bad\.png: "):
        load_image(tmp_path / "bad.png")


# -- collect_inputs: never a run's own outputs (issue 14) ----------------------------------

REPORT_HEAD = '{\n  "schema_version": 1,\n  "model": {},\n  "results": []\n}\n'


def a_run_out(folder: Path, report: str = "predictions.json", n: int = 3) -> Path:
    """A folder as a gradcam run leaves it: overlays, heatmaps and the report."""
    for i in range(n):
        make_image(folder / f"scene{i}.0-circle.features.overlay.png")
    (folder / report).write_text(REPORT_HEAD, encoding="utf-8")
    return folder


def test_a_folder_walk_skips_everything_inside_out_however_it_is_spelled(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    make_image(photos / "a.jpg")
    make_image(photos / "b.png")
    a_run_out(photos / "gradcam_out")
    (photos / "gradcam_out" / "predictions.json").unlink()  # a first run's out: no report yet
    monkeypatch.chdir(photos)
    link = tmp_path / "link_to_out"
    link.symlink_to(photos / "gradcam_out", target_is_directory=True)
    for out in (Path("gradcam_out"), Path("./gradcam_out/"), photos / "gradcam_out", link):
        skipped: list[str] = []
        items = collect_inputs(["."], out_dir=out, on_skip=skipped.append)
        assert sources(items) == ["./a.jpg", "./b.png"], out
        assert skipped == [
            f"skipped 3 files inside out='{out}'; name a file explicitly to explain it"
        ], out


def test_out_not_yet_made_and_nothing_skipped_say_nothing(tmp_path):
    make_image(tmp_path / "in" / "a.jpg")
    skipped: list[str] = []
    items = collect_inputs([str(tmp_path / "in")], out_dir=tmp_path / "out", on_skip=skipped.append)
    assert keys(items) == ["a"] and skipped == []


def test_folders_holding_another_runs_report_are_skipped_and_others_kept(tmp_path):
    root = tmp_path / "runs"
    make_image(root / "photo.png")
    a_run_out(root / "a")
    a_run_out(root / "a" / "sub")  # under a report folder: skipped with it
    a_run_out(root / "shard", report="predictions.2-of-4.json", n=2)
    # Named like a report but not one: a user's own file; the folder's images are theirs.
    make_image(root / "mine" / "cat.png")
    (root / "mine" / "predictions.json").write_text('{"cat": 0.9}', encoding="utf-8")
    make_image(root / "broken" / "dog.png")
    (root / "broken" / "predictions.json").write_text("{not json", encoding="utf-8")
    skipped: list[str] = []
    items = collect_inputs([str(root)], on_skip=skipped.append)
    assert keys(items) == ["broken/dog", "mine/cat", "photo"]
    assert skipped == [
        f"skipped 8 files in folders holding another run's report ({root / 'a'}, "
        f"{root / 'shard'}); name a file explicitly to explain it"
    ]


def test_skips_inside_out_and_report_folders_are_counted_in_one_message(tmp_path):
    root = tmp_path / "scenes"
    for name in ("s1", "s2"):
        make_image(root / f"{name}.png")
    a_run_out(root / "gradcam_out", n=4)
    a_run_out(root / "runs" / "a", n=2)
    skipped: list[str] = []
    out = root / "gradcam_out"
    items = collect_inputs([str(root)], out_dir=out, on_skip=skipped.append)
    assert keys(items) == ["s1", "s2"]
    assert skipped == [
        f"skipped 4 files inside out='{out}' and 2 in folders holding another run's report "
        f"({root / 'runs' / 'a'}); name a file explicitly to explain it"
    ]


def test_a_glob_skips_out_and_report_folders_too(tmp_path, monkeypatch):
    make_image(tmp_path / "s1.png")
    a_run_out(tmp_path / "gradcam_out", n=2)
    a_run_out(tmp_path / "old", n=2)
    monkeypatch.chdir(tmp_path)
    skipped: list[str] = []
    items = collect_inputs(["**/*.png"], out_dir=Path("gradcam_out"), on_skip=skipped.append)
    assert sources(items) == ["s1.png"]
    assert len(skipped) == 1 and "skipped 2 files inside out='gradcam_out' and 2 in" in skipped[0]
    # A glob into another run's folder is still a glob: skipped.
    assert collect_inputs(["old/*.png", "s1.png"]) == collect_inputs(["s1.png"])


def a_comparison_out(folder: Path, n: int = 2) -> Path:
    """A folder as `gradcam compare --report --out FOLDER` leaves it: the page's thumbnails
    in comparison/, comparison.json (its first key and its "pairs" list as compare writes)."""
    for i in range(n):
        make_image(folder / "comparison" / f"scene{i}.base.jpg")
    comparison = (
        '{\n  "schema_version": 1,\n  "base": "runs/a",\n  "new": "runs/b",\n  "pairs": []\n}'
    )
    (folder / "comparison.json").write_text(comparison, encoding="utf-8")
    (folder / "comparison.html").write_text("<!doctype html>", encoding="utf-8")
    return folder


def test_a_comparisons_thumbnails_are_skipped_like_another_runs_output(tmp_path, monkeypatch):
    make_image(tmp_path / "photo.png")
    a_comparison_out(tmp_path / "cmp", n=3)
    # A user's own comparison.json: not a gradcam comparison, the folder's images are theirs.
    make_image(tmp_path / "mine" / "cat.png")
    (tmp_path / "mine" / "comparison.json").write_text('{"pairs": 2}', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    skipped: list[str] = []
    assert keys(collect_inputs(["."], on_skip=skipped.append)) == ["mine/cat", "photo"]
    assert skipped == [
        "skipped 3 files in folders holding a gradcam comparison (./cmp); "
        "name a file explicitly to explain it"
    ]
    skipped.clear()
    a_run_out(tmp_path / "run", n=1)
    assert keys(collect_inputs(["**/*.*"], on_skip=skipped.append)) == ["cat", "photo"]
    assert skipped == [
        "skipped 4 files in folders holding another run's report or a gradcam comparison "
        "(cmp, run); name a file explicitly to explain it"
    ]


def test_a_file_named_explicitly_is_explained_even_inside_out(tmp_path):
    out = a_run_out(tmp_path / "gradcam_out", n=1)
    overlay = out / "scene0.0-circle.features.overlay.png"
    skipped: list[str] = []
    items = collect_inputs([str(overlay)], out_dir=out, on_skip=skipped.append)
    assert sources(items) == [str(overlay)] and items[0].error is None and skipped == []


def test_a_folder_inside_out_gives_nothing_and_the_usage_error_says_why(tmp_path):
    out = a_run_out(tmp_path / "gradcam_out", n=2)
    with pytest.raises(UsageError, match=r"no input images found in .*skipped 2 files inside"):
        collect_inputs([str(out)], out_dir=out)


# -- only regular files are read (issue 14) ------------------------------------------------

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")


@needs_fifo
def test_special_files_in_a_folder_are_items_with_an_error_naming_their_kind(tmp_path):
    root = tmp_path / "in"
    make_image(root / "photo.png")
    os.mkfifo(root / "pipe.jpg")
    bound_socket(root / "sock.png")
    (root / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "another_pipe")
    (root / "to_pipe.jpg").symlink_to(tmp_path / "another_pipe")
    items = collect_inputs([str(root)])
    assert [(item.key, item.error) for item in items] == [
        ("photo", None),
        ("pipe", "not a regular file: a named pipe (FIFO)"),
        ("sock", "not a regular file: a socket"),
        ("to_pipe", "not a regular file: a named pipe (FIFO)"),
        ("zero", "not a regular file: a character device"),
    ]


def decode_in_a_thread(path: Path, seconds: float = 10.0):
    """decode_image(path) on a thread: (finished, its exception or result); a blocked open of
    a FIFO is released afterwards by opening its other end."""
    import threading

    from gradcam_cli.inputs import decode_image

    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(decode_image(path))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    finished = not thread.is_alive()
    if not finished:  # unblock the reader so that the thread ends
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
    return finished, outcome[0] if outcome else None


@needs_fifo
@pytest.mark.parametrize("via", ["fifo", "symlink"])
def test_decoding_a_fifo_fails_at_once_instead_of_blocking(tmp_path, via):
    os.mkfifo(tmp_path / "pipe.jpg")
    path = tmp_path / "pipe.jpg"
    if via == "symlink":
        (tmp_path / "link.png").symlink_to(path)
        path = tmp_path / "link.png"
    finished, outcome = decode_in_a_thread(path)
    assert finished, "decode_image blocked on a named pipe"
    assert isinstance(outcome, ImageReadError)
    assert str(outcome) == f"cannot read {path}: not a regular file: a named pipe (FIFO)"


@needs_fifo
def test_a_file_swapped_for_a_fifo_after_the_check_does_not_block(tmp_path, monkeypatch):
    """The check and the open are two steps: what is opened is checked again (fstat)."""
    path = tmp_path / "photo.jpg"
    os.mkfifo(path)
    regular = os.stat(make_image(tmp_path / "real.jpg"))
    real_stat = os.stat

    def looks_regular(target, *args, **kwargs):  # what stat saw before the swap
        return regular if Path(target) == path else real_stat(target, *args, **kwargs)

    monkeypatch.setattr(os, "stat", looks_regular)
    finished, outcome = decode_in_a_thread(path)
    assert finished, "decode_image blocked on a named pipe"
    assert isinstance(outcome, ImageReadError) and "a named pipe (FIFO)" in str(outcome)


def test_character_devices_are_refused_by_name(tmp_path):
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    with pytest.raises(ImageReadError, match="not a regular file: a character device$"):
        load_image(tmp_path / "zero.png")
    [item] = collect_inputs([str(tmp_path / "zero.png")])
    assert item.error == "not a regular file: a character device"


# -- unsupported is not damaged (issue 14) -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        (
            "icc.png",
            iccp_bomb,
            "unsupported PNG: a text or ICC-profile chunk larger than Pillow's safety limit "
            r"\(PngImagePlugin.MAX_TEXT_CHUNK, 1 MB decompressed\); "
            "save it again without metadata to explain it",
        ),
        (
            "ztxt.png",
            lambda: png_with_chunk(
                b"zTXt", b"Comment\0\0" + __import__("zlib").compress(bytes(2 * 2**20))
            ),
            r"unsupported PNG: a text or ICC-profile chunk larger than Pillow's safety limit .*",
        ),
        (
            "five.tif",
            lambda: tiff_with_samples(5),
            r"unsupported TIFF: 5 channels \(samples per pixel\) of 8 bits; "
            "save it as RGB or RGBA to explain it",
        ),
    ],
)
def test_unsupported_files_say_unsupported_and_why(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content())
    with pytest.raises(ImageReadError, match=f"^cannot read .*{name}: {reason}$"):
        load_image(tmp_path / name)


def test_the_tiff_recipe_decodes_with_three_channels(tmp_path):
    for samples, grey in ((1, True), (2, True), (3, False), (5, False)):
        (tmp_path / "ok.tif").write_bytes(tiff_with_samples(samples, grey, width=6, height=4))
        assert load_image(tmp_path / "ok.tif").size == (6, 4), samples


# -- sharding ------------------------------------------------------------------------------

# Shard numbers from the documented rule (blake2b, 8 bytes, big-endian, mod N, plus 1), pinned:
# shards written by one version must be merged, resumed and re-run by the next.
PINNED_SHARDS = {  # key: shard of 2, of 3, of 8
    "cat": (2, 1, 8),
    "a/cat": (2, 3, 8),
    "caf\u00e9": (2, 1, 4),
    "scene0": (1, 3, 3),
    "scene2": (1, 2, 1),
    "p1": (2, 3, 2),
}
MANY_KEYS = [f"img{i:05d}" for i in range(10_000)]


def inputs_named(tmp_path: Path, names: list[str]) -> list[InputItem]:
    for name in names:
        make_image(tmp_path / name)
    return collect_inputs([str(tmp_path)])


@pytest.mark.parametrize(("key", "expected"), PINNED_SHARDS.items())
def test_shard_numbers_follow_the_documented_rule(key, expected):
    assert tuple(shard_of(key, n) for n in (2, 3, 8)) == expected
    digest = int(hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest(), 16)
    assert tuple(digest % n + 1 for n in (2, 3, 8)) == expected


def test_shard_numbers_are_the_same_in_every_process():
    # Python's own hash() of a str changes from process to process: shards must not use it.
    script = (
        "import json, sys; from gradcam_cli.inputs import shard_of; "
        "print(json.dumps({k: [shard_of(k, n) for n in (2, 3, 8)] for k in sys.argv[1:]}))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", script, *PINNED_SHARDS],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        assert json.loads(run.stdout) == {k: list(v) for k, v in PINNED_SHARDS.items()}, seed


def test_every_input_lands_in_exactly_one_shard_in_any_listing_order(tmp_path):
    items = inputs_named(tmp_path, [f"p{i}.png" for i in range(12)])
    shares = [select_shard(items, (k, 3)) for k in (1, 2, 3)]
    assert sorted(item.key for share in shares for item in share) == sorted(keys(items))
    assert all(share for share in shares)  # 12 inputs: each of 3 shards has some
    assert all(shard_of(item.key, 3) == k for k, share in enumerate(shares, 1) for item in share)
    assert [keys(share) for share in shares] == [
        [key for key in keys(items) if shard_of(key, 3) == k] for k in (1, 2, 3)
    ]  # each share keeps the listing's order
    backwards = list(reversed(items))
    assert select_shard(backwards, (2, 3)) == list(reversed(shares[1]))
    assert select_shard(items, None) == items


def test_adding_inputs_moves_none_of_the_others(tmp_path):
    before = inputs_named(tmp_path / "a", [f"p{i}.png" for i in range(8)])
    after = inputs_named(tmp_path / "b", [f"p{i}.png" for i in range(20)])
    for k in (1, 2, 3):
        old = set(keys(select_shard(before, (k, 3))))
        assert old == set(keys(select_shard(after, (k, 3)))) & set(keys(before)), k


def test_shards_are_balanced_within_ten_percent_over_many_names():
    counts = Counter(shard_of(key, 8) for key in MANY_KEYS)
    assert sorted(counts) == list(range(1, 9))
    expected = len(MANY_KEYS) / 8
    assert all(abs(count - expected) <= 0.1 * expected for count in counts.values()), counts


def test_another_shard_count_reassigns_as_documented():
    # Doubling N splits each shard in two: shard K of 4 becomes K or K + 4 of 8.
    for key in MANY_KEYS:
        assert shard_of(key, 8) in (shard_of(key, 4), shard_of(key, 4) + 4), key
    # Any other change moves most inputs: from 3 shards to 4, about three in four.
    kept = sum(shard_of(key, 3) == shard_of(key, 4) for key in MANY_KEYS) / len(MANY_KEYS)
    assert 0.2 <= kept <= 0.3, kept
    assert all(shard_of(key, 1) == 1 for key in MANY_KEYS)


@pytest.mark.parametrize("text", ["0/3", "4/3", "1", "a/b", "1/0"])
def test_bad_shard_specs_are_usage_errors(text):
    with pytest.raises(UsageError, match="^shard="):
        parse_shard(text)


@pytest.mark.parametrize(("text", "expected"), [("2/8", (2, 8)), (" 1 / 1 ", (1, 1))])
def test_shard_specs_are_read_as_k_of_n(text, expected):
    assert parse_shard(text) == expected
