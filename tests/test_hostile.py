"""Hostile inputs and faults (issue 7): every broken file is one clear `error` result, the good
ones are explained as in a clean run, nothing is written outside --out, and full disks, memory
shortages and non-finite numbers never cost more than the images they touch."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    SCENES,
    explain,
    noise,
    png_chunk,
    png_declaring,
    strict_json,
    strict_report,
    valid_png_of_size,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from special_files import bound_socket, iccp_bomb, tiff_with_samples

from gradcam_cli import files
from gradcam_cli.explainer import Explainer
from gradcam_cli.oom import OUT_OF_MEMORY_ALONE
from gradcam_cli.outputs import NONFINITE_MAP_WARNING, NONFINITE_SCORES, ZERO_MAP_WARNING

DEMO = ["--model", "demo:shapes", "--workers", "0"]  # decoding on a thread of this process


def artifacts(result: dict) -> list[str]:
    return [
        e[key]
        for e in result["explanations"]
        for key in ("overlay", "heatmap", "raw", "guided")
        if e[key]
    ]


def tree(root: Path, *skip: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` (links not followed) → (size, mtime_ns), except under `skip`."""
    found = {}
    for path in root.rglob("*"):
        if any(path == folder or folder in path.parents for folder in skip):
            continue
        info = path.lstat()
        found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return found


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


# -- 1. the corpus -------------------------------------------------------------------------------


def write_good_images(folder: Path) -> None:
    """Every kind of image that must be explained, under the names that must not collide."""
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    noise(1, 1, 1).save(folder / "one_pixel.png")
    noise(70, 50, 2).convert("L").save(folder / "grayscale.png")
    rgba = noise(60, 60, 3).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((60, 60)))
    rgba.save(folder / "rgba.png")
    noise(64, 40, 4).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    noise(50, 50, 5).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    sixteen = (np.random.default_rng(6).integers(0, 65536, (40, 56))).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "sixteen_bit.png")
    noise(48, 48, 7).convert("1").save(folder / "one_bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    noise(80, 40, 8).save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    frames = [noise(40, 40, 9), noise(40, 40, 10)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    frames[0].save(folder / "animated.webp", save_all=True, append_images=frames[1:], lossless=True)
    noise(64, 48, 11).save(folder / "with space.png")
    noise(64, 48, 12).save(folder / "ünïcødé 写真.png")
    noise(64, 48, 13).save(folder / "-rf --help.png")
    noise(64, 48, 14).save(folder / "a" / "same.png")
    noise(64, 48, 15).save(folder / "b" / "same.png")


BAD = {  # name → words its error must contain
    "zero_bytes.png": "empty file (0 bytes)",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "text.jpg": "a text file, not an image",
    "page.png": "an HTML page, not an image",
    "header_crc.png": "checksum in IHDR",
    "data_crc.png": "checksum in IDAT",
    "bomb.png": "decompression bomb guard",
    "huge_20000.png": "downscale it",
    "over_limit.png": "over the 89,478,485-pixel limit",  # Pillow alone only warns up to 2×
    "x.jpg": "is a directory",
    "loop_a.png": "symlink loop",
    "loop_b.png": "symlink loop",
    "no_access.png": "permission denied",
    # issue 14: what no longer hangs, bloats or gets the wrong reason
    "pipe.jpg": "not a regular file: a named pipe (FIFO)",
    "sock.png": "not a regular file: a socket",
    "zero.png": "not a regular file: a character device",  # a symlink to /dev/zero
    "strip_1x60000.png": "aspect ratio too extreme (1×60000)",
    "strip_60000x1.png": "aspect ratio too extreme (60000×1)",
    "icc_bomb.png": "unsupported PNG: a text or ICC-profile chunk larger than",
    "five_channels.tif": "unsupported TIFF: 5 channels (samples per pixel)",
}


def write_bad_files(folder: Path) -> None:
    (folder / "zero_bytes.png").write_bytes(b"")
    jpeg, png = encoded(noise(64, 64, 20), "JPEG"), encoded(noise(64, 64, 21), "PNG")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "text.jpg").write_text("Not a JPEG: just some notes someone saved with .jpg\n")
    (folder / "page.png").write_text("<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n")
    header_crc = bytearray(png)
    header_crc[29] ^= 0xFF  # IHDR's CRC: Pillow cannot even identify the file
    (folder / "header_crc.png").write_bytes(bytes(header_crc))
    data_crc = bytearray(png)
    idat = png.index(b"IDAT")
    length = struct.unpack(">I", png[idat - 4 : idat])[0]
    data_crc[idat + 4 + length] ^= 0xFF  # IDAT's CRC: the pixels decode, the checksum fails
    (folder / "data_crc.png").write_bytes(bytes(data_crc))
    (folder / "bomb.png").write_bytes(png_declaring(100_000, 100_000) + png_chunk(b"IEND", b""))
    (folder / "huge_20000.png").write_bytes(valid_png_of_size(20_000, 20_000))
    (folder / "over_limit.png").write_bytes(valid_png_of_size(10_000, 9_000))
    (folder / "x.jpg").mkdir()
    (folder / "loop_a.png").symlink_to("loop_b.png")
    (folder / "loop_b.png").symlink_to("loop_a.png")
    (folder / "itself").symlink_to(".", target_is_directory=True)  # a folder loop: not entered
    noise(64, 48, 22).save(folder / "no_access.png")
    (folder / "no_access.png").chmod(0)
    os.mkfifo(folder / "pipe.jpg")
    bound_socket(folder / "sock.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "strip_1x60000.png").write_bytes(valid_png_of_size(1, 60_000))
    (folder / "strip_60000x1.png").write_bytes(valid_png_of_size(60_000, 1))
    (folder / "icc_bomb.png").write_bytes(iccp_bomb())
    (folder / "five_channels.tif").write_bytes(tiff_with_samples(5))
    # A previous run's output inside the input folder: its pictures are not inputs.
    prior = folder / "prior_run"
    (prior / "a").mkdir(parents=True)
    for stem in ("one_pixel", "a/same"):
        noise(8, 8, 23).save(prior / f"{stem}.0-circle.features.overlay.png")
        noise(8, 8, 24).save(prior / f"{stem}.0-circle.features.heatmap.png")
    (prior / "predictions.json").write_text(
        json.dumps({"schema_version": 1, "model": {}, "results": []}), encoding="utf-8"
    )


@pytest.fixture
def deny_reads_as_root(monkeypatch):
    """chmod 0 stops reads for ordinary users only; as root (CI containers), opening a file of
    mode 0 for reading is made to fail with EACCES, as it would for anyone else."""
    if os.geteuid() != 0:
        return
    real_open = os.open

    def open_as_a_user(path, flags, *args, **kwargs):
        reading = flags & (os.O_WRONLY | os.O_RDWR) == 0
        try:
            denied = reading and os.stat(path).st_mode & 0o777 == 0
        except (OSError, TypeError, ValueError):
            denied = False
        if denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_as_a_user)


def test_a_folder_of_hostile_files_fails_each_bad_one_and_explains_the_good_as_alone(
    tmp_path, deny_reads_as_root
):
    mixed, clean = tmp_path / "mixed", tmp_path / "clean"
    write_good_images(mixed)
    write_good_images(clean)
    write_bad_files(mixed)
    before = tree(tmp_path)
    out, clean_out = tmp_path / "out", tmp_path / "clean_out"

    result = explain(str(mixed), *DEMO, "--save-raw", "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert explain(str(clean), *DEMO, "--save-raw", "--out", str(clean_out)).exit_code == 0

    report, alone = strict_report(out), strict_report(clean_out)
    by_name = {r["input"][len(str(mixed)) + 1 :]: r for r in report["results"]}
    good = {r["input"][len(str(clean)) + 1 :]: r for r in alone["results"]}
    # Exactly one result per input, in input order: every image-named entry, good or bad.
    assert len(by_name) == len(report["results"]) == len(good) + len(BAD) == 36
    assert set(by_name) == set(good) | set(BAD)
    assert [r["input"] for r in report["results"]] == sorted(r["input"] for r in report["results"])
    assert report["summary"] == {**report["summary"], "ok": len(good), "errors": len(BAD)}

    for name, words in BAD.items():
        record = by_name[name]
        assert record["status"] == "error", name
        assert words in record["error"] and "\n" not in record["error"], (name, record["error"])
        assert record["explanations"] == [] and name in result.stderr

    # The good ones: exactly what a clean run of them alone gives, maps included.
    for name, expected in good.items():
        record = by_name[name]
        assert record["status"] == "ok", (name, record["error"])
        assert record["size"] == expected["size"] and record["warnings"] == expected["warnings"]
        assert [p["index"] for p in record["predictions"]] == [
            p["index"] for p in expected["predictions"]
        ]
        for got, want in zip(record["predictions"], expected["predictions"], strict=True):
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-6)
        for got, want in zip(record["explanations"], expected["explanations"], strict=True):
            assert got["overlay"] == want["overlay"]
            np.testing.assert_allclose(
                np.load(out / got["raw"]), np.load(clean_out / want["raw"]), rtol=1e-5, atol=1e-7
            )
    assert by_name["exif_rotated.jpg"]["size"] == [40, 80]
    for name in ("animated.gif", "animated.webp"):
        assert by_name[name]["warnings"] == [
            f"animated {name.split('.')[1].upper()} with 2 frames: only the first was explained"
        ]

    # No two outputs collide, every file is whole, and nothing was written outside --out.
    written = [path for r in report["results"] for path in artifacts(r)]
    assert len(written) == len(set(written)) == 3 * len(good)
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(written) | {"predictions.json"}
    assert any(p.startswith("a/same.") for p in on_disk)
    assert any(p.startswith("b/same.") for p in on_disk)  # same name, two folders, two files
    assert any(p.startswith("_rf_--help.") for p in on_disk)  # never an option-like name
    for path in written:
        if path.endswith(".png"):
            with Image.open(out / path) as picture:
                picture.load()
    assert tree(tmp_path, out, clean_out) == before


# -- 2. fuzzing ----------------------------------------------------------------------------------


def tiny_explainer() -> Explainer:
    from torch import nn

    from gradcam_cli.sources import LoadedModel, custom_preprocess

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    loaded = LoadedModel(model, "tiny", "custom", "random", custom_preprocess(16))
    return Explainer(loaded, ["1"])


SEEDS = {
    fmt: encoded(noise(12, 9, i), fmt, **extra)
    for i, (fmt, extra) in enumerate(
        [
            ("PNG", {}),
            ("JPEG", {"quality": 80}),
            ("GIF", {}),
            ("WEBP", {}),
            ("BMP", {}),
            ("TIFF", {"compression": "tiff_lzw"}),
        ]
    )
}


@st.composite
def damaged_image_bytes(draw) -> bytes:
    """A valid small image, then up to four cuts, byte changes, insertions or deletions."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        kind = draw(st.sampled_from(["truncate", "set", "insert", "delete"]))
        if kind == "truncate":
            del data[at:]
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_explainer():
    return tiny_explainer()


@settings(
    max_examples=300,
    derandomize=True,  # the same examples on every run: CI never flakes on a new one
    deadline=None,  # a 2-core machine shared with other jobs: time per example varies
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(damaged=st.lists(damaged_image_bytes(), min_size=1, max_size=3))
def test_damaged_image_bytes_always_give_one_result_each_and_strict_json(
    damaged, fuzz_explainer, tmp_path_factory, monkeypatch
):
    from gradcam_cli.inputs import collect_inputs
    from gradcam_cli.outputs import RunOptions
    from gradcam_cli.runner import run_explain

    # A mutated header can declare any size: keep the guard low so that no example costs
    # more than a few megabytes (the bomb path is exercised all the more).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250_000)
    folder = tmp_path_factory.mktemp("fuzz")
    names = [f"f{i}.{fmt}" for i, fmt in enumerate(["png", "jpg", "webp"][: len(damaged)])]
    for name, data in zip(names, damaged, strict=True):
        (folder / name).write_bytes(data)
    noise(10, 10, 0).save(folder / "good.png")
    items = collect_inputs([str(folder)])
    out = folder / "out"
    with warnings.catch_warnings():  # Pillow warns about damaged metadata, and large images
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        report = run_explain(fuzz_explainer, items, RunOptions(out_dir=out, batch_size=2))
    assert len(report.results) == len(items)
    document = strict_report(out)
    assert [r["input"] for r in document["results"]] == [item.source for item in items]
    assert len(items) == len(damaged) + 1
    for record in document["results"]:
        assert record["status"] in ("ok", "error")
        if record["status"] == "error":
            assert record["error"] and "\n" not in record["error"]
            assert not record["error"].startswith("internal error"), record["error"]
        for path in artifacts(record):
            assert (out / path).is_file()
    assert document["results"][-1]["status"] == "ok"  # the good image, whatever its neighbours
    assert not list(out.rglob("*.tmp"))
    shutil.rmtree(folder)


# -- 4. output confinement -----------------------------------------------------------------------


def test_no_input_name_and_no_link_in_out_can_make_it_write_elsewhere(tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "shots" / "planted").mkdir(parents=True)
    (elsewhere / "deep").mkdir(parents=True)
    noise(40, 30, 1).save(elsewhere / "deep" / "up.png")
    noise(40, 30, 2).save(elsewhere / "absolute.png")
    noise(40, 30, 3).save(elsewhere / "deep" / "..png", format="PNG")  # its stem is '.'
    noise(40, 30, 4).save(elsewhere / "deep" / "back\\slash.png")
    noise(40, 30, 5).save(elsewhere / "deep" / "-o.png")
    noise(40, 30, 6).save(work / "shots" / "planted" / "p.png")
    noise(40, 30, 7).save(work / "victim.png")
    # --out already holds links that lead out of it: a folder and a file an output would take.
    out = work / "out"
    out.mkdir()
    (out / "planted").symlink_to(elsewhere, target_is_directory=True)
    (out / "up.0-circle.features.overlay.png").symlink_to(work / "victim.png")
    monkeypatch.chdir(work)
    stdin = "\n".join(
        [
            "../elsewhere/deep/../deep/..png",
            "shots/../../elsewhere/deep/back\\slash.png",
            str(elsewhere / "deep" / "-o.png"),
        ]
    )
    before = tree(tmp_path, out)
    result = explain(
        "../elsewhere/deep/up.png",
        str(elsewhere / "absolute.png"),
        "-",
        "shots",
        *DEMO,
        "--target",
        "circle",
        "--out",
        "out",
        input=stdin,
    )
    assert result.exit_code == 1, result.output
    report = strict_report(out)
    status = {Path(r["input"]).name: (r["status"], r["error"]) for r in report["results"]}
    assert status["up.png"][0] == "error" and "outside --out" in status["up.png"][1]
    assert status["p.png"][0] == "error" and "outside --out" in status["p.png"][1]
    assert {name for name, (state, _) in status.items() if state == "ok"} == {
        "absolute.png",
        "..png",
        "back\\slash.png",
        "-o.png",
    }
    assert tree(tmp_path, out) == before  # nothing outside --out changed, the victim included
    for path in out.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert path.resolve().is_relative_to(out.resolve()), path
    keys = {p.name.split(".0-circle")[0] for p in out.iterdir() if ".0-circle." in p.name}
    assert keys == {"up", "absolute", "_", "back_slash", "_o"}  # 'up' is the planted link


# -- 7. numbers ----------------------------------------------------------------------------------

EDGE_MODELS = '''
import torch
from torch import nn


class Edgy(nn.Module):
    """Ordinary on most images; on some, what broken models do (chosen by the image itself):
    flat grey -> constant logits (zero gradient), bright -> NaN logits, dark -> an infinite
    logit, red -> finite logits with a NaN gradient at the layer (sqrt'(0) * 0)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        pooled = self.features(x).mean((2, 3))
        logits = self.fc(pooled)
        with torch.no_grad():
            flat = x.std((2, 3)).max(1).values < 0.05
            mean = x.mean((1, 2, 3))
            red = (x[:, 0].mean((1, 2)) - x[:, 1].mean((1, 2))) > 1.0
        rows = red.nonzero().flatten()
        if len(rows):
            logits = logits.clone()
            logits[rows] += 0 * torch.sqrt(pooled[rows].sum(1, keepdim=True) * 0)
        logits = torch.where(flat[:, None], torch.tensor([1.0, 2.0, 3.0]), logits)
        nan = torch.where(mean > 1.5, float("nan"), 1.0)
        inf = torch.where(mean < -1.5, float("inf"), 0.0)
        zero = torch.zeros_like(inf)
        return logits * nan[:, None] + torch.stack([inf, zero, zero], 1)
'''


def test_zero_and_non_finite_maps_and_scores_never_reach_the_json_or_the_pictures(
    tmp_path, monkeypatch
):
    (tmp_path / "edge_models.py").write_text(EDGE_MODELS)
    photos = tmp_path / "photos"
    photos.mkdir()
    noise(48, 40, 1).save(photos / "noise.png")
    Image.new("RGB", (48, 40), (128, 128, 128)).save(photos / "grey.png")
    Image.new("RGB", (48, 40), (255, 255, 255)).save(photos / "white.png")
    Image.new("RGB", (48, 40), (0, 0, 0)).save(photos / "black.png")
    rng = np.random.default_rng(2)
    red = np.zeros((40, 48, 3), dtype=np.uint8)
    red[..., 0] = rng.integers(200, 256, (40, 48))
    red[..., 1:] = rng.integers(0, 40, (40, 48, 2))
    Image.fromarray(red).save(photos / "red.png")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = ["--model", "edge_models.py:Edgy", "--layer", "features", "--input-size", "32"]
    result = explain("photos", *args, "--save-raw", "--workers", "0", "--out", str(out))
    assert result.exit_code == 1, result.output

    text = (out / "predictions.json").read_text(encoding="utf-8")
    assert not re.search(r"[:\[,]\s*-?(NaN|Infinity)\b", text)  # no bare tokens as values
    results = {Path(r["input"]).stem: r for r in strict_report(out)["results"]}
    assert results["noise"]["status"] == "ok"
    assert results["noise"]["explanations"][0]["warnings"] == []
    for name in ("white", "black"):  # nothing to explain: say so, draw nothing
        assert results[name]["status"] == "error" and results[name]["error"] == NONFINITE_SCORES
        assert results[name]["explanations"] == [] and results[name]["predictions"]
        assert any(p["probability"] is None for p in results[name]["predictions"])
    assert results["grey"]["explanations"][0]["warnings"] == [ZERO_MAP_WARNING]
    assert results["red"]["explanations"][0]["warnings"] == [
        NONFINITE_MAP_WARNING,
        ZERO_MAP_WARNING,
    ]
    from gradcam_cli.render import colormap_lut

    lowest = colormap_lut("jet")[0]
    for name in ("grey", "red"):
        [record] = results[name]["explanations"]
        raw = np.load(out / record["raw"])
        assert np.isfinite(raw).all() and not raw.any()  # an empty map, never NaN
        heatmap = np.asarray(Image.open(out / record["heatmap"]).convert("RGBA"))
        inside = heatmap[..., 3] == 255
        assert inside.any() and (heatmap[inside][:, :3] == lowest).all()  # no NaN garbage
        photo = np.asarray(Image.open(photos / f"{name}.png").convert("RGB"), dtype=np.float32)
        overlay = np.asarray(Image.open(out / record["overlay"]), dtype=np.float32)
        blended = 0.5 * photo + 0.5 * lowest.astype(np.float32)
        assert np.abs(overlay[inside] - blended[inside]).max() <= 1.0


# -- 8. full disks and memory --------------------------------------------------------------------


def no_space_for(monkeypatch, fails) -> None:
    """Writes to paths for which `fails(path)` holds write part of the file, then hit ENOSPC,
    as a full disk does (files.py's real atomic write runs, temporary file and all)."""
    real = files._write_atomic

    def write_atomic(path, write):
        if not fails(Path(path)):
            return real(path, write)

        def partial(handle):
            handle.write(b"\x89PNG\r\n\x1a\n half of a file")
            raise OSError(errno.ENOSPC, "No space left on device")

        return real(path, partial)

    monkeypatch.setattr(files, "_write_atomic", write_atomic)


def whole_files(out: Path) -> dict[str, bytes]:
    found = {}
    for path in sorted(out.rglob("*")):
        if path.suffix == ".png":
            with Image.open(path) as picture:
                picture.load()  # decodes to the end
        found[str(path.relative_to(out))] = path.read_bytes()
    return found


def test_a_full_disk_fails_the_images_it_touches_and_names_the_cause(tmp_path, monkeypatch):
    out = tmp_path / "out"
    no_space_for(
        monkeypatch, lambda path: path.name.startswith("circle.") and "heatmap" in path.name
    )
    result = explain(str(SCENES), *DEMO, "--out", str(out))
    assert result.exit_code == 1
    report = strict_report(out)
    failed = [r for r in report["results"] if r["status"] == "error"]
    assert [Path(r["input"]).name for r in failed] == ["circle.png"]
    assert failed[0]["error"] == (
        "cannot write its outputs: no space left on device; free some space, then rerun with "
        "--resume"
    )
    assert report["summary"]["ok"] == 5
    whole_files(out)  # what was written decodes, the circle's overlay included
    assert not list(out.rglob("*.tmp"))


def test_when_the_disk_fills_up_what_was_written_stays_whole_and_stderr_says_the_report_is_missing(
    tmp_path, monkeypatch
):
    out = tmp_path / "out"
    assert explain(str(SCENES), *DEMO, "--out", str(out)).exit_code == 0
    before = whole_files(out)
    writes = []

    def full_after_five(path: Path) -> bool:
        writes.append(path)
        return len(writes) > 5

    no_space_for(monkeypatch, full_after_five)
    result = explain(str(SCENES), *DEMO, "--out", str(out))
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("gradcam: error:")]
    assert lines == [
        f"gradcam: error: cannot write the report {out / 'predictions.json'}: "
        "no space left on device"
    ]
    assert whole_files(out) == before  # the previous run's files and report, untouched
    assert not list(out.rglob("*.tmp"))


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    """The sample scenes explained one by one, nothing failing: the reference."""
    clean = tmp_path_factory.mktemp("clean")
    assert explain(str(SCENES), *DEMO, "--save-raw", "-b", "1", "--out", str(clean)).exit_code == 0
    return clean


def oom_when_larger_than(limit: int, error: BaseException, monkeypatch, alone=None):
    """Explainer.explain runs out of memory for batches of more than `limit` images, and for
    any batch holding an image of size `alone` (one that cannot fit at all)."""
    real = Explainer.explain
    sizes = []

    def explain_in_little_memory(self, images, **kwargs):
        sizes.append(len(images))
        if len(images) > limit or any(image.size == alone for image in images):
            raise error
        return real(self, images, **kwargs)

    monkeypatch.setattr(Explainer, "explain", explain_in_little_memory)
    return sizes


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(
            torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
            id="cuda",
        ),
        pytest.param(MemoryError(), id="cpu-python"),
        pytest.param(
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"),
            id="cpu-torch",
        ),
    ],
)
def test_out_of_memory_splits_the_batch_and_every_map_equals_a_clean_runs(
    tmp_path, monkeypatch, error, clean_run
):
    clean, split = clean_run, tmp_path / "split"
    sizes = oom_when_larger_than(2, error, monkeypatch)
    result = explain(str(SCENES), *DEMO, "--save-raw", "-b", "6", "--out", str(split))
    assert result.exit_code == 0, result.output
    assert sizes == [6, 3, 2, 1, 2, 1]  # halves, then the size that fitted for the rest
    assert "out of memory at --batch-size 6" in result.stderr and "--batch-size 2" in result.stderr
    report, expected = strict_report(split), strict_report(clean)
    assert report["summary"]["batch_size_reduced_to"] == 2
    for got, want in zip(report["results"], expected["results"], strict=True):
        assert got["status"] == "ok"
        assert got["predictions"][0]["index"] == want["predictions"][0]["index"]
        assert got["predictions"][0]["probability"] == pytest.approx(
            want["predictions"][0]["probability"], abs=1e-6
        )
        [a], [b] = got["explanations"], want["explanations"]
        want_map = np.load(clean / b["raw"])  # batch sizes differ: float rounding differs
        np.testing.assert_allclose(
            np.load(split / a["raw"]), want_map, rtol=1e-4, atol=1e-4 * want_map.max()
        )


def test_an_image_that_does_not_fit_alone_fails_with_a_reason_naming_memory(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        noise(60, 40, i).save(photos / f"p{i}.png")
    noise(90, 70, 9).save(photos / "p2.png")  # the one too large for memory
    oom_when_larger_than(8, MemoryError(), monkeypatch, alone=(90, 70))
    out = tmp_path / "out"
    result = explain(str(photos), *DEMO, "-b", "4", "--out", str(out))
    assert result.exit_code == 1
    status = {
        Path(r["input"]).stem: (r["status"], r["error"]) for r in strict_report(out)["results"]
    }
    assert status.pop("p2") == ("error", OUT_OF_MEMORY_ALONE)
    assert "memory" in OUT_OF_MEMORY_ALONE and "--input-size" in OUT_OF_MEMORY_ALONE
    assert all(state == ("ok", None) for state in status.values())


# -- 9. warnings (issue 14) ----------------------------------------------------------------------

CORRUPT_EXIF = "Corrupt EXIF data. Expecting to read 12 bytes but only got 0."


def corrupt_exif_jpeg(path: Path) -> Path:
    """A JPEG whose EXIF block says 5 tags but holds 1: Pillow warns "Corrupt EXIF data"
    (twice) while the orientation is read, and decodes the picture anyway."""
    tiff = b"II*\x00" + struct.pack("<IH", 8, 5) + struct.pack("<HHI4s", 0x0112, 3, 1, b"\6\0\0\0")
    noise(16, 8, 30).save(path, exif=b"Exif\x00\x00" + tiff, quality=95)
    return path


def test_the_fixture_really_makes_pillow_warn(tmp_path):
    path = corrupt_exif_jpeg(tmp_path / "exif.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(path) as image:
            image.getexif()
    assert any("Corrupt EXIF data" in str(w.message) for w in caught)


@pytest.mark.parametrize("workers", [0, 1])
def test_warnings_while_decoding_go_to_that_images_result_once_each(tmp_path, workers):
    from gradcam_cli.inputs import collect_inputs
    from gradcam_cli.pipeline import decode_batches
    from gradcam_cli.preprocess import Preprocess

    corrupt_exif_jpeg(tmp_path / "exif.jpg")
    noise(16, 8, 31).save(tmp_path / "plain.png")
    items = collect_inputs([str(tmp_path)])
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        decoded = [d for batch in decode_batches(items, 1, Preprocess(), workers) for d in batch]
    assert [(Path(d.item.source).name, d.error, d.warnings) for d in decoded] == [
        ("exif.jpg", None, (CORRUPT_EXIF,)),
        ("plain.png", None, ()),
    ]
    assert not [w for w in leaked if "EXIF" in str(w.message)]  # recorded, not raised on


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_corrupt_exif_warning_is_one_line_naming_the_file_and_is_in_the_json(tmp_path, workers):
    import subprocess
    import sys

    photo = corrupt_exif_jpeg(tmp_path / "exif.jpg")
    command = [sys.executable, "-m", "gradcam_cli", "explain", str(photo), "--model"]
    command += ["demo:shapes", "--workers", workers, "--out", str(tmp_path / "out"), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [result] = strict_json(done.stdout)["results"]
    assert result["warnings"] == [CORRUPT_EXIF]
    lines = [line for line in done.stderr.splitlines() if "EXIF" in line]
    assert lines == [f"gradcam: warning: {photo}: {CORRUPT_EXIF}"], done.stderr
    assert "Warning" not in done.stderr and "warnings.warn" not in done.stderr, done.stderr


# -- 10. what a folder holds besides photos (issue 14) ---------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_run_over_a_folder_holding_a_fifo_ends_on_its_own_and_names_it(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "in"
    folder.mkdir()
    noise(64, 48, 40).save(folder / "photo.png")
    os.mkfifo(folder / "pipe.jpg")  # nobody ever writes to it: reading it waits for ever
    command = [sys.executable, "-m", "gradcam_cli", "explain", str(folder), "--model"]
    command += ["demo:shapes", "--workers", "0", "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    status = {
        Path(r["input"]).name: (r["status"], r["error"])
        for r in strict_report(tmp_path / "out")["results"]
    }
    reason = "not a regular file: a named pipe (FIFO)"
    assert status == {"photo.png": ("ok", None), "pipe.jpg": ("error", reason)}
    assert any("pipe.jpg" in line and reason in line for line in done.stderr.splitlines())


def test_a_second_run_in_the_same_folder_explains_the_photos_not_the_first_runs_outputs(
    tmp_path, monkeypatch
):
    scenes = tmp_path / "scenes"
    shutil.copytree(SCENES, scenes)
    monkeypatch.chdir(scenes)
    for _ in range(2):  # --out gradcam_out, the default, inside the folder explained
        run = explain(".", *DEMO)
        assert run.exit_code == 0
        results = strict_report(scenes / "gradcam_out")["results"]
        assert sorted(r["input"] for r in results) == sorted(
            f"./{p.name}" for p in SCENES.iterdir()
        )
    skipped = "skipped 12 files inside --out gradcam_out; name a file explicitly to explain it"
    assert f"gradcam: {skipped}" in run.stderr.splitlines()
    for _ in range(2):  # --out named inside the input folder
        assert explain(str(scenes), *DEMO, "--out", str(scenes / "runs" / "b")).exit_code == 0
        assert len(strict_report(scenes / "runs" / "b")["results"]) == 6


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_mask_that_is_a_fifo_or_over_the_pixel_limit_fails_at_once(tmp_path, monkeypatch):
    import threading

    from gradcam_cli.errors import ImageReadError
    from gradcam_cli.localization import read_mask

    os.mkfifo(tmp_path / "mask.png")
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_mask(tmp_path / "mask.png", (8, 8))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # release the blocked reader before failing
        os.close(os.open(tmp_path / "mask.png", os.O_WRONLY | os.O_NONBLOCK))
    assert not thread.is_alive(), "read_mask blocked on a named pipe"
    assert isinstance(outcome[0], ImageReadError)
    assert str(outcome[0]).endswith("not a regular file: a named pipe (FIFO)")

    Image.new("L", (15, 10), 255).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone only warns up to 2×
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Image.open's own
        with pytest.raises(ImageReadError, match="150 pixels, over the 100-pixel limit"):
            read_mask(tmp_path / "big.png", (15, 10))


def test_pictures_inside_out_are_skipped_even_before_it_holds_a_report(tmp_path):
    """A run stopped before its first report, or one whose report was deleted: --out is still
    recognised as --out (by device and inode), whatever the spelling."""
    photos = tmp_path / "photos"
    shutil.copytree(SCENES, photos)
    (photos / "out").mkdir()
    for name in ("a", "b"):
        noise(16, 16, 41).save(photos / "out" / f"{name}.0-circle.features.overlay.png")
    run = explain(str(photos), *DEMO, "--out", str(photos / "." / "out"))
    assert run.exit_code == 0, run.output
    assert len(strict_report(photos / "out")["results"]) == 6
    assert "skipped 2 files inside --out" in run.stderr
