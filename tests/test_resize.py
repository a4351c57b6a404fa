"""`resize=` (`--resize`, issue 19): crop, squash and pad each give the model the input it was
trained on and place the map back where the model saw it, on the Pillow and the device path."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import v2

from gradcam_cli.devicedecode import DeviceDecoder
from gradcam_cli.errors import UsageError, as_cli_flags
from gradcam_cli.inputs import collect_inputs
from gradcam_cli.job import JobOptions, run_job
from gradcam_cli.pipeline import _decode_batch
from gradcam_cli.preprocess import Preprocess
from gradcam_cli.render import colormap_lut
from gradcam_cli.sources import custom_preprocess, load_model, override_preprocess

# torchvision says its decoders are deprecated (0.29); Python hides that outside tests.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

MODES = ("crop", "squash", "pad")
PHOTO = (320, 200)  # (width, height): not square, so the three modes differ


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colours, noise and a disc: something for the resize to get right."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / width, y * 255 / height, (x + y) % 256], -1)
    image = Image.fromarray(np.uint8(np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255)))
    disc = (width / 4, height / 5, width / 2, height / 2)
    ImageDraw.Draw(image).ellipse(disc, fill=(250, 20, 90))
    return image


# -- the model's input, against the transforms each mode stands for ----------------------------


def tensor(transform: v2.Transform, image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """What a torchvision pipeline ending in ToTensor + Normalize makes of `image`."""
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    normalize = v2.Normalize(list(preprocess.mean), list(preprocess.std))
    return v2.Compose([transform, *to_tensor, normalize])(image).numpy()


@pytest.mark.parametrize("size", [PHOTO, (150, 260)])
def test_squash_is_resize_to_height_width(size):
    """`Resize((H, W))` on a PIL image (Pillow's antialiased filter): the same array."""
    preprocess = Preprocess(input_size=(64, 80), resize_shorter=100).with_resize("squash")
    image = photo(*size)
    expected = tensor(v2.Resize((64, 80), antialias=True), image, preprocess)
    assert np.abs(preprocess.to_array(image) - expected).max() < 1e-5
    assert preprocess.crop_box(*size) == (0.0, 0.0, float(size[0]), float(size[1]))


@pytest.mark.parametrize("size", [PHOTO, (150, 260), (97, 64)])
def test_pad_letterboxes_with_the_mean_colour_as_timm_border_does(size):
    """The photo scaled to fit, aspect kept (timm's crop_mode 'border' at crop_pct 1); the
    padding is the mean colour exactly, so 0 once normalised (timm pads its nearest level)."""
    from timm.data.transforms import CenterCropOrPad, ResizeKeepRatio

    preprocess = Preprocess(input_size=(64, 64), resize_shorter=90).with_resize("pad")
    assert preprocess.resize_shorter == 64  # pad shows the whole photo: nothing cropped
    image = photo(*size)
    fill = [round(255 * m) for m in preprocess.mean]
    letterbox = v2.Compose([ResizeKeepRatio(64, longest=1.0), CenterCropOrPad(64, fill=fill)])
    expected = tensor(letterbox, image, preprocess)
    array = preprocess.to_array(image)
    x0, y0, x1, y1 = preprocess.photo_region(*size)
    assert (x1 - x0 == 64) != (y1 - y0 == 64) or size[0] == size[1]  # one axis is padded
    inside = np.zeros(array.shape[1:], bool)
    inside[y0:y1, x0:x1] = True
    assert np.abs(array[:, inside] - expected[:, inside]).max() < 1e-5
    assert not array[:, ~inside].any() and (~inside).sum() > 64 * 10
    # timm's padding is the mean colour to a level
    level = np.reshape(preprocess.std, (3, 1)) * 255
    assert np.abs(expected[:, ~inside] * level).max() <= 0.5 + 1e-3


def test_crop_is_todays_shorter_side_and_centre_crop():
    preprocess = Preprocess(input_size=(64, 64), resize_shorter=73)
    assert preprocess.with_resize("crop") == preprocess  # the model's ratio kept
    image = photo(*PHOTO)
    crop = v2.Compose([v2.Resize(73, antialias=True), v2.CenterCrop(64)])
    assert np.abs(preprocess.to_array(image) - tensor(crop, image, preprocess)).max() < 1e-5


@pytest.mark.parametrize("size", [(61, 40), (64, 37)])
def test_a_crop_past_the_resized_photo_pads_as_center_crop(size):
    """CenterCrop pads half the excess, rounded down, before: so does the input's geometry."""
    preprocess = Preprocess(input_size=(48, 48), resize_shorter=45)
    image = photo(*size)
    crop = v2.Compose([v2.Resize(45, antialias=True), v2.CenterCrop(48)])
    assert np.abs(preprocess.to_array(image) - tensor(crop, image, preprocess)).max() < 1e-5


# -- the device decoder ------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("mode", MODES)
def test_the_device_decoder_gives_pillows_input_in_every_mode(tmp_path, mode, interpolation):
    for i, size in enumerate([PHOTO, (150, 260), (97, 64), (64, 64)]):
        photo(*size, seed=i).save(tmp_path / f"p{i}.jpg", quality=90)
    base = Preprocess(input_size=(48, 56), resize_shorter=54, interpolation=interpolation)
    preprocess = base.with_resize(mode)
    items = collect_inputs([str(tmp_path)])
    pillow = _decode_batch(items, preprocess)
    device = DeviceDecoder(torch.device("cpu"))(items, preprocess)
    assert all(d.pixels is not None for d in device)  # all taken by the device path
    levels = {"bilinear": 1, "bicubic": 4, "nearest": 0}[interpolation]  # test_devicedecode's
    for cpu, dev in zip(pillow, device, strict=True):
        assert dev.array.shape == (3, 48, 56)
        difference = np.abs(cpu.array - dev.array.numpy()) * np.reshape(preprocess.std, (3, 1, 1))
        assert difference.max() * 255 <= levels + 1e-3, dev.item.key
        if mode == "pad":
            x0, y0, x1, y1 = preprocess.photo_region(*cpu.image.size)
            padding = np.ones((48, 56), bool)
            padding[y0:y1, x0:x1] = False
            assert not dev.array.numpy()[:, padding].any()


# -- the map goes back where the model saw it ----------------------------------------------------

# A model whose `features` are the input's brightness and whose class 0 is their mean: Grad-CAM of
# class 0 there is the positive part of the brightness, so the map is the marker on black.
BRIGHTNESS_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Brightness(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Conv2d(3, 1, 1, bias=False)
            with torch.no_grad():
                self.features.weight.fill_(1 / 3)

        def forward(self, x):
            score = self.features(x).mean(dim=(1, 2, 3))
            return torch.stack([score, -score], dim=1)
    """
)


def marker_photo(centre: tuple[int, int]) -> Image.Image:
    """Black, with a bright Gaussian spot (σ 6 px) centred on `centre` (x, y)."""
    width, height = PHOTO
    y, x = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    spot = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * 6.0**2))
    return Image.fromarray(np.uint8(np.round(255 * spot))).convert("RGB")


def heatmap_values(path) -> tuple[np.ndarray, np.ndarray]:
    """The placed map (0–1) a heatmap PNG shows, read back through its colormap, and its
    opaque part (what the model saw)."""
    rgba = np.asarray(Image.open(path).convert("RGBA"), dtype=np.int32)
    lut = colormap_lut("viridis").astype(np.int32)
    distance = ((rgba[..., None, :3] - lut[None, None]) ** 2).sum(-1)
    return distance.argmin(-1) / 255.0, rgba[..., 3] > 0


@pytest.mark.parametrize(
    ("mode", "centre", "decode"),
    [
        ("crop", (205, 70), "cpu"),
        ("squash", (205, 70), "cpu"),
        ("pad", (205, 70), "cpu"),
        ("squash", (18, 183), "device"),  # a corner that crop cuts off
        ("pad", (18, 183), "device"),
    ],
)
def test_a_marker_lands_where_it_is_on_the_photo(tmp_path, mode, centre, decode):
    (tmp_path / "bright.py").write_text(BRIGHTNESS_MODEL)
    marker_photo(centre).save(tmp_path / "marker.png")
    # a JPEG for the device path (a PNG is Pillow's): quality 100 keeps the spot where it is
    marker_photo(centre).save(tmp_path / "marker.jpg", quality=100)
    name = "marker.jpg" if decode == "device" else "marker.png"
    report = run_job(
        str(tmp_path / name),
        f"{tmp_path / 'bright.py'}:Brightness",
        out=tmp_path / "out",
        resize=mode,
        input_size=80,
        layers="features",
        targets=[0],
        colormap="viridis",
        decode=decode,
        workers=0,
    )
    [result] = report.results
    assert result.status == "ok", result.error
    values, seen = heatmap_values(tmp_path / "out" / result.explanations[0].heatmap)
    assert values.shape == (PHOTO[1], PHOTO[0])
    # squash and pad show the model the whole photo; crop loses its sides
    assert seen.all() if mode != "crop" else seen.any(axis=0).sum() == 200
    y, x = np.unravel_index(np.argmax(values), values.shape)
    assert abs(x + 0.5 - centre[0]) <= 2 and abs(y + 0.5 - centre[1]) <= 2, (x, y)
    hot = np.where(values >= 0.5, values, 0.0)  # the spot's centre of mass
    ys, xs = np.mgrid[0 : PHOTO[1], 0 : PHOTO[0]] + 0.5
    mass = hot.sum()
    assert abs((hot * xs).sum() / mass - centre[0]) <= 1
    assert abs((hot * ys).sum() / mass - centre[1]) <= 1


# -- which mode, and refusals --------------------------------------------------------------------


def test_each_library_defaults_to_its_models_convention(tmp_path):
    tv = load_model("torchvision:resnet18", pretrained=False).preprocess
    assert (tv.resize, tv.resize_shorter, tv.input_size) == ("crop", 256, (224, 224))
    timm_model = load_model("timm:test_resnet", pretrained=False).preprocess
    assert timm_model.resize == "crop"  # its data config: crop_mode 'center'
    assert load_model("demo:shapes").preprocess.resize == "crop"
    (tmp_path / "bright.py").write_text(BRIGHTNESS_MODEL)
    custom = load_model(f"{tmp_path / 'bright.py'}:Brightness").preprocess
    assert custom == custom_preprocess() and custom.resize == "crop"
    assert custom.resize_shorter == min(custom.input_size)  # shorter side → input, centre crop


@pytest.mark.parametrize(
    ("crop_mode", "resize"), [("squash", "squash"), ("border", "pad"), ("center", "crop")]
)
def test_a_timm_config_is_followed_exactly(crop_mode, resize):
    """timm's own eval transform from the model's data config: the same input, crop_pct kept."""
    import timm
    from timm.data import create_transform, resolve_data_config

    from gradcam_cli.sources.timm import timm_preprocess

    model = timm.create_model(
        "test_resnet", pretrained=False, pretrained_cfg_overlay={"crop_mode": crop_mode}
    )
    preprocess = timm_preprocess(model)
    assert preprocess.resize == resize and preprocess.resize_shorter > min(preprocess.input_size)
    image = photo(*PHOTO)
    expected = create_transform(**resolve_data_config({}, model=model))(image).numpy()
    array = preprocess.to_array(image)
    x0, y0, x1, y1 = preprocess.photo_region(*PHOTO)  # timm pads the mean's nearest level
    assert np.abs(array[:, y0:y1, x0:x1] - expected[:, y0:y1, x0:x1]).max() < 1e-5
    assert np.abs(array - expected).max() < 0.01


def test_an_explicit_mode_and_input_size():
    base = Preprocess(input_size=(224, 224), resize_shorter=256, resize_mode="squash")
    for mode in ("squash", "pad"):
        square = override_preprocess(base, resize=mode, input_size=96)
        assert (square.resize, square.input_size, square.resize_shorter) == (mode, (96, 96), 96)
    crop = override_preprocess(base, resize="crop", input_size=112)
    assert (crop.resize_mode, crop.input_size, crop.resize_shorter) == ("shorter", (112, 112), 128)
    assert override_preprocess(base, input_size=112).resize_mode == "squash"  # None: kept
    loaded = load_model("demo:shapes", resize="pad", input_size=64)
    assert loaded.preprocess.describe()["resize_mode"] == "pad"
    assert loaded.preprocess.input_size == (64, 64)


def test_a_bad_mode_names_the_modes():
    with pytest.raises(UsageError) as caught:
        JobOptions(resize="sqush")
    message = str(caught.value)
    assert "resize= takes crop, squash, pad" in message and "Did you mean 'squash'" in message
    assert as_cli_flags(message).startswith("--resize takes crop, squash, pad")
    with pytest.raises(UsageError, match="resize= takes crop, squash, pad.*'letterbox'"):
        load_model("demo:shapes", resize="letterbox")
    with pytest.raises(UsageError, match="resize= takes"):
        Preprocess().with_resize("shorter")  # the recorded name, not a choice
    with pytest.raises(UsageError, match=r"resize= build a model named by a string"):
        from gradcam_cli.job import prepare_job

        prepare_job([], load_model("demo:shapes"), resize="pad", out="/nonexistent-resize")
