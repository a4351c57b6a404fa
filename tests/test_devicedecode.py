"""JPEGs decoded, preprocessed and overlaid on the model's device (devicedecode, devicerender),
checked on the CPU against the Pillow path they stand in for."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import interrupt_explain_at_call
from PIL import Image, ImageDraw

from gradcam_cli.devicedecode import DeviceDecoder, decode_device, device_decode_refusal
from gradcam_cli.devicerender import DeviceExplanation, encode_overlays, overlay_pixels
from gradcam_cli.errors import UsageError
from gradcam_cli.explainer import Explainer
from gradcam_cli.explanation import RenderOptions
from gradcam_cli.files import EncodedJpeg, write_image_atomic
from gradcam_cli.inputs import InputItem, collect_inputs
from gradcam_cli.outputs import RunOptions
from gradcam_cli.pipeline import Decoded, _decode_batch, decode_batches
from gradcam_cli.preprocess import Preprocess
from gradcam_cli.render import colormap_lut, overlay_image, place_map
from gradcam_cli.runner import run_explain
from gradcam_cli.sources import load_model

# torchvision says its decoders are deprecated (0.29); Python hides that outside tests.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

CPU = torch.device("cpu")


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colours and a few shapes, like a photo in compressibility."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / width, y * 255 / height, (x + y) % 256], -1)
    pixels = pixels + rng.normal(0, 6, pixels.shape)
    image = Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.uniform(0, width * 0.7), rng.uniform(0, height * 0.7)
        size = rng.uniform(0.1, 0.3) * min(width, height)
        draw.ellipse(
            (x0, y0, x0 + size, y0 + size), fill=tuple(int(c) for c in rng.integers(0, 255, 3))
        )
    return image


SIZES = [(160, 120), (120, 160), (97, 64), (300, 40), (128, 128)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """JPEGs the device takes, then every kind it leaves to Pillow."""
    folder = tmp_path_factory.mktemp("jpegs")
    for i, size in enumerate(SIZES):
        photo(*size, seed=i).save(folder / f"a{i}.jpg", quality=90)
    photo(140, 100, seed=9).save(folder / "b_progressive.jpg", quality=85, progressive=True)
    photo(90, 70, seed=10).save(folder / "c.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: Pillow turns it upright
    photo(120, 80, seed=11).save(folder / "d_rotated.jpg", exif=exif.tobytes())
    photo(100, 100, seed=12).convert("L").save(folder / "e_gray.jpg")
    photo(100, 100, seed=13).convert("CMYK").save(folder / "f_cmyk.jpg")
    whole = (folder / "a0.jpg").read_bytes()
    (folder / "g_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "h_text.jpg").write_text("not a picture\n")
    return folder


def items_of(folder: Path) -> list[InputItem]:
    return collect_inputs([str(folder)])


FALLBACKS = ["c", "d_rotated", "e_gray", "f_cmyk", "g_truncated", "h_text"]


# -- decoding and preprocessing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "preprocess",
    [
        Preprocess(input_size=(96, 96), resize_shorter=110),
        Preprocess(input_size=(96, 96), resize_shorter=110, interpolation="bicubic"),
        Preprocess(input_size=(96, 96), resize_shorter=110, interpolation="nearest"),
        Preprocess(input_size=(64, 80), resize_shorter=64, resize_mode="squash"),
        Preprocess(input_size=(150, 150), resize_shorter=140),  # crop past the edges: zeros
    ],
    ids=["bilinear", "bicubic", "nearest", "squash", "padded"],
)
def test_the_model_input_is_pillows_to_a_level(folder, preprocess):
    items = items_of(folder)
    pillow = _decode_batch(items, preprocess)
    device = DeviceDecoder(CPU)(items, preprocess)
    assert [d.item for d in device] == items
    on_device = [d for d in device if d.pixels is not None]
    assert {d.item.key for d in on_device} == {f"a{i}" for i in range(len(SIZES))} | {
        "b_progressive"
    }
    for cpu, dev in zip(pillow, device, strict=True):
        if dev.pixels is None:
            continue
        assert isinstance(dev.array, torch.Tensor) and dev.array.dtype == torch.float32
        # torchvision's CPU decoder is Pillow's libjpeg-turbo: the very same photo
        assert np.array_equal(np.asarray(cpu.image), np.asarray(dev.image))
        assert np.array_equal(dev.pixels.permute(1, 2, 0).numpy(), np.asarray(cpu.image))
        difference = np.abs(cpu.array - dev.array.numpy()) * np.reshape(preprocess.std, (3, 1, 1))
        assert difference.max() * 255 <= LEVELS[preprocess.interpolation] + 1e-3, dev.item.key
        assert (difference > 1e-6).mean() < 0.25  # most values are exactly Pillow's


# The resize is Pillow's own fixed-point arithmetic, pass by pass; Pillow 13 takes its two
# passes in the other order for some sizes (its own rule): then a value here and there differs
# by a level (bilinear) or a few (bicubic clips between the passes); nearest is exact.
LEVELS = {"bilinear": 1, "bicubic": 4, "nearest": 0}


def test_what_the_device_cannot_do_exactly_is_pillows_result_word_for_word(folder):
    items = items_of(folder)
    preprocess = Preprocess(input_size=(64, 64), resize_shorter=72)
    pillow = {d.item.key: d for d in _decode_batch(items, preprocess)}
    device = {d.item.key: d for d in DeviceDecoder(CPU)(items, preprocess)}
    for key in FALLBACKS:
        one, two = pillow[key], device[key]
        assert two.pixels is None, key
        assert (one.error, one.warnings) == (two.error, two.warnings)
        if one.error is None:
            assert np.array_equal(one.array, two.array)
            assert np.array_equal(np.asarray(one.image), np.asarray(two.image))
    assert "truncated" in device["g_truncated"].error
    assert "a text file" in device["h_text"].error
    reasons = {
        key: device_decode_refusal(folder / f"{key}.jpg", preprocess) for key in FALLBACKS[1:4]
    }
    assert reasons == {
        "d_rotated": "EXIF orientation: Pillow turns the photo upright",
        "e_gray": "L JPEG",
        "f_cmyk": "CMYK JPEG",
    }


def test_a_missing_file_a_folder_and_a_strip_too_thin_fail_as_before(folder, tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    photo(4000, 3, seed=1).save(tmp_path / "strip.jpg")  # resized: 128 × 170,666
    items = [
        InputItem("gone.jpg", tmp_path / "gone.jpg", "gone"),
        InputItem("dir.jpg", tmp_path / "dir.jpg", "dir"),
        InputItem("strip.jpg", tmp_path / "strip.jpg", "strip"),
        InputItem("listed", None, "listed", error="not a regular file: a named pipe (FIFO)"),
    ]
    preprocess = Preprocess(input_size=(128, 128), resize_shorter=128)
    pillow = _decode_batch(items, preprocess)
    device = DeviceDecoder(CPU)(items, preprocess)
    assert [(d.error, d.pixels) for d in device] == [(d.error, None) for d in pillow]
    assert all(d.error for d in device[:2]) and device[3].error.startswith("not a regular")
    assert np.array_equal(device[2].array, pillow[2].array)  # a strip: resampled by Pillow


def test_decode_batches_on_the_device_keeps_order_and_hands_other_files_to_the_workers(folder):
    items = items_of(folder)
    preprocess = Preprocess(input_size=(64, 64), resize_shorter=72)
    pillow = [d for batch in decode_batches(items, 4, preprocess) for d in batch]
    decoder = functools.partial(DeviceDecoder, CPU)
    batches = decode_batches(items, 4, preprocess, 1, device_decoder=decoder)
    device = [d for batch in batches for d in batch]
    assert [d.item for d in device] == items
    assert [(d.error, d.warnings) for d in device] == [(d.error, d.warnings) for d in pillow]
    assert {d.item.key for d in device if d.pixels is None} == set(FALLBACKS)


def test_the_decode_choice():
    assert decode_device("cpu", CPU) is None
    assert decode_device("auto", CPU) is None  # auto: only a CUDA GPU
    assert decode_device("device", CPU) == CPU
    with pytest.raises(UsageError, match="decode= takes auto, cpu, device.*'device'"):
        decode_device("devise", CPU)


# -- the explanation ----------------------------------------------------------------------------


def correlation(one: np.ndarray, two: np.ndarray) -> float:
    return float(np.corrcoef(one.ravel(), two.ravel())[0, 1])


@pytest.mark.parametrize("model", ["timm:test_resnet", "demo:shapes"])
def test_the_maps_are_pillows_on_a_real_model(folder, model):
    explainer = Explainer(load_model(model, pretrained=False), device="cpu")
    items = [item for item in items_of(folder) if item.key.startswith(("a", "b"))]
    preprocess = explainer.loaded.preprocess
    pillow = _decode_batch(items, preprocess)
    device = DeviceDecoder(CPU)(items, preprocess)
    assert all(d.pixels is not None for d in device)
    one = explainer.explain([d.image for d in pillow], arrays=[d.array for d in pillow], topk=2)
    two = explainer.explain([d.image for d in device], arrays=[d.array for d in device], topk=2)
    for a, b in zip(one, two, strict=True):
        assert [t.index for t in a.targets] == [t.index for t in b.targets]
        assert a.crop_box == b.crop_box
        for key, raw in a.maps.items():
            assert correlation(raw, b.maps[key]) >= 0.999, key


# -- the overlay --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explained(folder):
    """demo:shapes explanations of the device-decoded JPEGs, with their Decoded."""
    explainer = Explainer(load_model("demo:shapes"), device="cpu")
    decoded = DeviceDecoder(CPU)(items_of(folder), explainer.loaded.preprocess)
    readable = [d for d in decoded if d.error is None]
    explanations = explainer.explain(
        [d.image for d in readable], arrays=[d.array for d in readable], topk=2
    )
    return decoded, explanations


@pytest.mark.parametrize(
    "render",
    [
        RenderOptions(),
        RenderOptions("viridis", 0.3, "bicubic", "max"),
        RenderOptions(interpolation="nearest"),
    ],
    ids=["default", "viridis-bicubic-max", "nearest"],
)
def test_the_overlay_on_the_device_is_render_overlay_image(explained, render):
    decoded, explanations = explained
    readable = [d for d in decoded if d.error is None]
    lut = colormap_lut(render.colormap)
    for d, e in zip(readable, explanations, strict=True):
        if d.pixels is None:
            continue
        for index, layer in e.maps:
            values, inside = e.placed(index, layer, render)
            expected = np.asarray(overlay_image(e.image, values, inside, lut, render.alpha), int)
            pixels = overlay_pixels(e, index, layer, d.pixels, torch.from_numpy(lut.copy()), render)
            difference = np.abs(pixels.permute(1, 2, 0).numpy().astype(int) - expected)
            # The map is placed with matrix products in another order: a level here and there
            # where the colour index rounds the other way.
            assert difference.mean() < 0.05 and difference.max() <= 8, difference.max()


def test_jpeg_overlays_are_encoded_on_the_device_and_written_as_they_are(explained, tmp_path):
    decoded, explanations = explained
    options = RunOptions(out_dir=tmp_path, overlay_format="jpg", heatmap=False)
    done = encode_overlays(decoded, explanations, options)
    readable = [d for d in decoded if d.error is None]
    for d, before, after in zip(readable, explanations, done, strict=True):
        if d.pixels is None:  # drawn on the CPU, as before
            assert after is before
            continue
        assert isinstance(after, DeviceExplanation) and after.maps is before.maps
        for target in after.targets:
            jpeg = after.overlay(target)
            assert isinstance(jpeg, EncodedJpeg) and jpeg.size == before.image.size
            # the same overlay encoded by Pillow, at the same quality
            buffer = io.BytesIO()
            before.overlay(target).save(buffer, "JPEG", quality=90)
            cpu = np.asarray(Image.open(buffer), float)
            assert np.abs(np.asarray(jpeg.convert("RGB"), float) - cpu).mean() < 1.0
            path = tmp_path / f"{d.item.key}.{target.index}.jpg"
            write_image_atomic(path, jpeg, "jpg")
            assert path.read_bytes() == jpeg.encoded
            # other options, the heatmap: drawn on the CPU as for any explanation
            other = RenderOptions(alpha=0.7)
            assert not isinstance(after.overlay(target, options=other), EncodedJpeg)
            overlay, heatmap = after.pictures(target)
            assert overlay is jpeg and heatmap.size == jpeg.size
    png = RunOptions(out_dir=tmp_path, overlay_format="png")
    assert encode_overlays(decoded, explanations, png) is explanations


def test_encoded_jpeg_keeps_its_bytes_only_on_itself():
    buffer = io.BytesIO()
    photo(40, 30, seed=0).save(buffer, "JPEG", quality=90)
    jpeg = EncodedJpeg(buffer.getvalue())
    assert jpeg.format == "JPEG" and jpeg.size == (40, 30)
    assert not isinstance(jpeg.convert("RGB"), EncodedJpeg)
    assert place_map(np.ones((2, 2), np.float32), jpeg.size, (0, 0, 40, 30), "bilinear")[1].all()


# -- a whole run --------------------------------------------------------------------------------


def run(explainer, folder: Path, out: Path, decode: str, **options) -> dict:
    run_options = RunOptions(out_dir=out, batch_size=3, decode=decode, save_raw=True, **options)
    run_explain(explainer, items_of(folder), run_options)
    return json.loads((out / "predictions.json").read_text())


@pytest.mark.parametrize("overlay_format", ["jpg", "png"])
def test_a_run_decoding_on_the_device_writes_what_a_pillow_run_writes(
    folder, tmp_path, overlay_format
):
    explainer = Explainer(load_model("demo:shapes"), device="cpu")
    options = {"overlay_format": overlay_format, "heatmap": overlay_format == "png"}
    pillow = run(explainer, folder, tmp_path / "cpu", "cpu", **options)
    device = run(explainer, folder, tmp_path / "device", "device", **options)
    for report in (pillow, device):
        report.pop("summary", None)
        report.pop("seconds", None)
    assert pillow.keys() == device.keys()
    assert pillow["options"] == device["options"]  # the choice is not part of the report
    for one, two in zip(pillow["results"], device["results"], strict=True):
        assert {k: v for k, v in one.items() if k not in ("predictions", "explanations")} == {
            k: v for k, v in two.items() if k not in ("predictions", "explanations")
        }
        if one["status"] != "ok":
            continue
        assert [p["index"] for p in one["predictions"]] == [p["index"] for p in two["predictions"]]
        for a, b in zip(one["explanations"], two["explanations"], strict=True):
            assert a.keys() == b.keys() and a["overlay"] == b["overlay"]
            raw = correlation(
                np.load(tmp_path / "cpu" / a["raw"]), np.load(tmp_path / "device" / b["raw"])
            )
            assert raw >= 0.999
            lossless = np.asarray(Image.open(tmp_path / "cpu" / a["overlay"]), float)
            lossy = np.asarray(Image.open(tmp_path / "device" / b["overlay"]), float)
            assert np.abs(lossless - lossy).mean() < 3.0
    assert sorted(p.name for p in (tmp_path / "cpu").rglob("*")) == sorted(
        p.name for p in (tmp_path / "device").rglob("*")
    )


def test_a_stop_during_a_device_run_reports_what_was_written(folder, tmp_path, monkeypatch):
    explainer = Explainer(load_model("demo:shapes"), device="cpu")
    interrupt_explain_at_call(explainer, monkeypatch, call=2)
    out = tmp_path / "out"
    options = RunOptions(out_dir=out, batch_size=3, decode="device", overlay_format="jpg")
    report = run_explain(explainer, items_of(folder), options)
    assert report.interrupted
    written = json.loads((out / "predictions.json").read_text())
    assert [r["input"] for r in written["results"]] == [i.source for i in items_of(folder)[:3]]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_decoded_items_carry_the_photo_on_the_host_for_the_cpu_drawings(folder):
    preprocess = Preprocess(input_size=(64, 64), resize_shorter=72)
    [one] = DeviceDecoder(CPU)(items_of(folder)[:1], preprocess)
    assert isinstance(one, Decoded) and one.image.mode == "RGB"
    assert one.image.size == (one.pixels.shape[2], one.pixels.shape[1])


def test_a_device_run_writes_the_overlays_encoded_on_the_device(folder, tmp_path, monkeypatch):
    from gradcam_cli import outputs

    kinds: list[type] = []
    real = outputs.write_image_atomic

    def recording(path, image, image_format):
        kinds.append(type(image))
        real(path, image, image_format)

    monkeypatch.setattr(outputs, "write_image_atomic", recording)
    explainer = Explainer(load_model("demo:shapes"), device="cpu")
    run(explainer, folder, tmp_path, "device", overlay_format="jpg", heatmap=False)
    # the JPEGs the device decoded (one map each) are written as encoded there
    assert kinds.count(EncodedJpeg) == len(SIZES) + 1


def test_the_cli_takes_decode_device_and_refuses_a_bad_value(folder, tmp_path):
    from typer.testing import CliRunner

    from gradcam_cli.cli import app

    def explain(*args: str):
        return CliRunner().invoke(app, ["explain", str(folder), "-m", "demo:shapes", *args])

    results = {}
    for mode in ("cpu", "device"):
        out = tmp_path / mode
        done = explain("--decode", mode, "--format", "jpg", "--out", str(out))
        assert done.exit_code == 1, done.output  # the truncated and the text file fail
        report = json.loads((out / "predictions.json").read_text())
        results[mode] = [
            (r["input"], r["status"], [p["index"] for p in r["predictions"]])
            for r in report["results"]
        ]
    assert results["device"] == results["cpu"]
    refused = explain("--decode", "gpu", "--out", str(tmp_path / "x"))
    assert refused.exit_code == 2
    assert "--decode takes auto, cpu, device, got 'gpu'" in refused.output
    assert not (tmp_path / "x").exists()
