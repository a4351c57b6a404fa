"""Segmentation models and detectors (gradcam_cli/tasks): what a target is, that the split is
still exact, that maps land on the photo, and what the CLI writes and refuses.

Models are random-init torchvision ones (detectors built with a zero score threshold, so that
random weights still detect something) and two small home-made ones: a segmentation net and a
"detector" whose one detection is a fixed box of the photo.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    explain,
    invoke,
    max_relative_error,
    noise,
    strict_report,
    textbook_backward,
)
from PIL import Image
from torch import nn

from gradcam_cli import Explainer
from gradcam_cli.preprocess import Preprocess
from gradcam_cli.tasks import TargetRequest, get_task
from gradcam_cli.tasks.detection import MATCH_IOU

SEG_SOURCE = '''
import torch
from torch import nn
import torch.nn.functional as F


class TinySeg(nn.Module):
    """Per-pixel logits of 3 classes, torchvision-style: {"out": [B, 3, H, W]}."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.classifier = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        logits = self.classifier(self.backbone(x))
        return {"out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear")}
'''

DETECTOR_SOURCE = '''
import torch
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import roi_align

BOX = (60.0, 10.0, 95.0, 40.0)  # x0, y0, x1, y1 in the photo's pixels


class FixedBoxDetector(nn.Module):
    """One detection, always the box BOX of the photo, whose score reads the features inside
    that box only (RoIAlign), after the model's own resizing and padding, as torchvision's."""

    def __init__(self, box=BOX):
        super().__init__()
        torch.manual_seed(0)
        self.box = box
        self.transform = GeneralizedRCNNTransform(
            min_size=64, max_size=128, image_mean=[0.0] * 3, image_std=[1.0] * 3
        )
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=4, padding=1), nn.ReLU(),
        )

    def forward(self, images):
        originals = [tuple(image.shape[-2:]) for image in images]
        batch, _ = self.transform(list(images))
        features = self.backbone(batch.tensors)
        found = []
        for i, ((h, w), (oh, ow)) in enumerate(zip(batch.image_sizes, originals)):
            sx, sy = w / ow, h / oh
            x0, y0, x1, y1 = self.box
            box = torch.tensor([[float(i), x0 * sx, y0 * sy, x1 * sx, y1 * sy]])
            pooled = roi_align(features, box, (4, 4), spatial_scale=0.25, aligned=True)
            score = torch.sigmoid(pooled.mean() - 0.5).reshape(1)
            found.append({
                "boxes": torch.tensor([self.box]), "labels": torch.tensor([1]), "scores": score,
            })
        return found
'''
BOX = (60.0, 10.0, 95.0, 40.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    (folder / "tinyseg.py").write_text(SEG_SOURCE, encoding="utf-8")
    (folder / "fixedbox.py").write_text(DETECTOR_SOURCE, encoding="utf-8")
    (folder / "labels.txt").write_text("sky\ngrass\nsheep\n", encoding="utf-8")
    return folder


def _module(path: Path, name: str, *args) -> nn.Module:
    namespace: dict = {}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    return namespace[name](*args).eval()


def _tiny_seg(models: Path) -> nn.Module:
    return _module(models / "tinyseg.py", "TinySeg")


def _textbook(model: nn.Module, x, layer: str, target) -> torch.Tensor:
    """Grad-CAM of `target(output)` by a full backward through the whole model."""
    activations, gradients, _ = textbook_backward(model, x, layer, target)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1).clamp(min=0)[0]


# -- what a target is ----------------------------------------------------------------------------


def test_a_segmentation_target_sums_the_class_logits_over_its_predicted_pixels(models):
    model = _tiny_seg(models)
    photo = noise(40, 32, seed=1)
    preprocess = Preprocess(input_size=(32, 40), resize_shorter=32, resize_mode="keep")
    explainer = Explainer(model, "backbone.3", task="segmentation", preprocess=preprocess)
    result = explainer.explain(photo, topk=3)
    x = torch.from_numpy(preprocess.to_array(photo))[None]
    with torch.no_grad():
        logits = model(x)["out"][0]
    predicted = logits.argmax(0)
    present = sorted(set(predicted.flatten().tolist()), key=lambda c: -(predicted == c).sum())
    assert [t.index for t in result.targets] == present  # only the classes on some pixel
    for target in result.targets:
        inside = predicted == target.index
        assert target.score == pytest.approx(float(logits[target.index][inside].sum()), rel=1e-5)
        assert target.pixel_share == pytest.approx(float(inside.float().mean()))
        share = logits.softmax(0)[target.index][inside].mean()
        assert target.probability == pytest.approx(float(share), rel=1e-5)
        assert np.array_equal(result.region(target), inside.numpy())  # keep: the photo's grid


def test_a_segmentation_target_over_a_given_region_is_the_hand_written_sum(models):
    model = _tiny_seg(models)
    photo = noise(40, 32, seed=2)
    preprocess = Preprocess(input_size=(32, 40), resize_shorter=32, resize_mode="keep")
    region = np.zeros((32, 40), dtype=bool)
    region[5:20, 8:30] = True
    explainer = Explainer(model, "backbone.3", task="segmentation", preprocess=preprocess)
    result = explainer.explain(photo, targets=[0, 2], region=region)
    x = torch.from_numpy(preprocess.to_array(photo))[None]
    with torch.no_grad():
        logits = model(x)["out"][0]
    for target in result.targets:
        by_hand = float(logits[target.index][torch.from_numpy(region)].sum())
        assert target.score == pytest.approx(by_hand, rel=1e-5)
        assert np.array_equal(result.region(target), region)
    # and the maps differ from those over the predicted pixels: the region is what was used
    plain = explainer.explain(photo, targets=[0, 2])
    assert not np.allclose(plain.raw(0), result.raw(0))


def test_a_region_of_the_wrong_size_is_refused_with_both_sizes(models):
    explainer = Explainer(_tiny_seg(models), "backbone.3", task="segmentation")
    with pytest.raises(Exception, match=r"region= is 30×20 but the photo is 40×32"):
        explainer.explain(noise(40, 32, seed=0), region=np.ones((20, 30), dtype=bool))


def test_detection_slots_match_a_rerun_by_class_and_overlap():
    scoring = get_task("detection").scoring(TargetRequest(topk=5), False)
    reference = [
        {
            "boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]),
            "labels": torch.tensor([3, 7]),
            "scores": torch.tensor([0.9, 0.6]),
        }
    ]
    first = scoring.bind(reference)
    assert first.tolist() == [[pytest.approx(0.9), pytest.approx(0.6), 0.0]]  # + the null slot
    moved = [
        {
            "boxes": torch.tensor([[1.0, 1, 11, 11], [20, 20, 40, 40], [0, 0, 10, 10]]),
            "labels": torch.tensor([3, 5, 9]),  # the second box changed class
            "scores": torch.tensor([0.8, 0.7, 0.95]),
        }
    ]
    again = scoring.scores(moved, torch.tensor([0]))
    iou = (9 * 9) / (100 + 100 - 81)
    assert iou >= MATCH_IOU
    # slot 0: the same class, overlapping enough; the class-9 box in the very same place does
    # not stand for it; slot 1: no detection of class 7 any more → 0
    assert again.tolist() == [[pytest.approx(0.8), 0.0, 0.0]]
    assert scoring.choose(first).tolist() == [[0, 1]]


def test_detections_are_chosen_by_class_min_score_and_topk():
    outputs = [
        {
            "boxes": torch.tensor([[0.0, 0, 10, 10]] * 4) + torch.arange(4.0)[:, None] * 20,
            "labels": torch.tensor([1, 2, 1, 1]),
            "scores": torch.tensor([0.9, 0.8, 0.4, 0.2]),
        },
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.long),
            "scores": torch.zeros(0),
        },
    ]

    def chosen(**request):
        scoring = get_task("detection").scoring(TargetRequest(**request), False)
        return scoring.choose(scoring.bind(outputs)).tolist()

    assert chosen(topk=2) == [[0, 1], [4, 4]]  # the image without detections: the null slot
    assert chosen(classes=(1,), topk=5) == [[0, 2, 3], [4, 4, 4]]
    assert chosen(classes=(1,), topk=5, min_score=0.3) == [[0, 2], [4, 4]]
    assert chosen(min_score=0.95) == [[], []]


# -- the split is exact --------------------------------------------------------------------------


def test_segmentation_split_equals_a_full_backward_for_torchvision_lraspp():
    from torchvision.models import get_model

    torch.manual_seed(0)
    model = get_model("lraspp_mobilenet_v3_large", weights=None, weights_backbone=None).eval()
    layer = "backbone.16"
    preprocess = Preprocess(input_size=(96, 128), resize_shorter=96, resize_mode="keep")
    photo = noise(128, 96, seed=3)
    explainer = Explainer(model, layer, task="segmentation", preprocess=preprocess)
    result = explainer.explain(photo, topk=1)
    [target] = result.targets
    x = torch.from_numpy(preprocess.to_array(photo))[None]

    def summed_over_predicted_pixels(output):
        logits = output["out"][0]
        inside = logits.detach().argmax(0) == target.index
        return logits[target.index][inside].sum()

    reference = _textbook(model, x, layer, summed_over_predicted_pixels)
    assert max_relative_error(torch.from_numpy(result.raw(target)), reference) <= 1e-4


def test_detection_split_equals_a_full_backward_for_torchvision_faster_rcnn():
    from torchvision.models import get_model

    torch.manual_seed(0)
    model = get_model(
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        weights=None,
        weights_backbone=None,
        box_score_thresh=0.0,
    ).eval()
    layer = "backbone.body.13"
    photo = noise(320, 320, seed=4)  # resized to itself, padded by nothing: the maps compare
    explainer = Explainer(model, layer, task="detection")
    result = explainer.explain(photo, topk=2)
    assert len(result.targets) == 2 and result.targets[0].box is not None
    x = torch.from_numpy(explainer.loaded.preprocess.to_array(photo))[None]
    for rank, target in enumerate(result.targets):
        reference = _textbook(
            model, x, layer, lambda output, d=target.index: output[0]["scores"][d]
        )
        ours = torch.from_numpy(result.raw(target))
        assert max_relative_error(ours, reference) <= 1e-4, rank


# -- maps on the photo ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(100, 70), (70, 100), (128, 64)])
def test_a_detection_map_lands_on_its_box_in_the_photo_frame(models, size):
    """The fixed-box detector's score reads only the features under its box, after the model
    resized and padded the photo: LayerCAM's map (gradient × activation, nothing spread by a
    global weight) must lie on the box once placed on the photo."""
    width, height = size
    sx, sy = width / 100, height / 70
    scaled = (BOX[0] * sx, BOX[1] * sy, BOX[2] * sx, BOX[3] * sy)  # in this photo's pixels
    model = _module(models / "fixedbox.py", "FixedBoxDetector", scaled)
    explainer = Explainer(model, "backbone.3", task="detection", method="layercam")
    photo = noise(*size, seed=5)
    result = explainer.explain(photo)
    [target] = result.targets
    assert target.box == pytest.approx(list(scaled), abs=0.01)
    values, seen = result.placed(target)
    assert seen.all()  # the map covers the whole photo, nothing of the padding
    x0, y0, x1, y1 = (int(round(v)) for v in scaled)
    grown = np.zeros_like(seen)
    cell = 4 * max(width / 91, height / 64)  # one feature cell, in photo pixels (at most)
    pad = int(np.ceil(cell))
    grown[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad] = True
    inside = values[grown].sum() / values.sum()
    peak = np.unravel_index(np.argmax(values), values.shape)
    assert y0 <= peak[0] < y1 and x0 <= peak[1] < x1
    assert inside >= 0.95


def test_without_cutting_the_padding_the_map_would_miss_the_box(models, monkeypatch):
    """The check above can fail: skip the cut of the detector's padding and the map drifts."""
    from gradcam_cli.tasks import detection

    box = (50.0, 26.0, 70.0, 39.0)  # at the bottom, where the padding begins below it
    model = _module(models / "fixedbox.py", "FixedBoxDetector", box)
    explainer = Explainer(model, "backbone.3", task="detection", method="layercam")
    photo = noise(128, 40, seed=6)  # resized 200×64 → 128×41 … padded to 128×64: much padding

    def energy_in_box(result) -> float:
        values, _ = result.placed(result.targets[0])
        x0, y0, x1, y1 = (int(v) for v in box)
        return float(values[y0:y1, x0:x1].sum() / values.sum())

    right = energy_in_box(explainer.explain(photo))
    monkeypatch.setattr(detection._DetectionScoring, "frame", lambda self, maps: maps)
    wrong = energy_in_box(explainer.explain(photo))
    assert right > wrong + 0.2


def test_eigencam_explains_a_detector_without_gradients(models):
    model = _module(models / "fixedbox.py", "FixedBoxDetector")
    explainer = Explainer(model, "backbone.3", task="detection", method="eigencam")
    result = explainer.explain(noise(100, 70, seed=7))
    assert result.raw().max() > 0 and result.raw().shape[0] >= 1


def test_the_caller_s_detector_is_left_as_it_was(models):
    from helpers import assert_same_state, model_state

    model = _module(models / "fixedbox.py", "FixedBoxDetector").train()
    before = model_state(model)
    Explainer(model, "backbone.3", task="detection").explain(noise(100, 70, seed=8))
    assert_same_state(before, model_state(model))


# -- keep: each photo at its own size --------------------------------------------------------


def test_resize_keep_shows_the_model_the_whole_photo_and_batches_by_size(gap_linear_model):
    keep = Preprocess(input_size=(32, 32), resize_shorter=32, resize_mode="keep")
    assert keep.crop_box(80, 40) == (0.0, 0.0, 80.0, 40.0)
    assert keep.model_input_size(80, 40) == (32, 64)
    assert keep.to_array(noise(80, 40, seed=0)).shape == (3, 32, 64)
    as_given = Preprocess.as_given()
    assert as_given.model_input_size(81, 43) == (43, 81)
    assert as_given.model_view(photo := noise(81, 43, seed=0)) is photo
    explainer = Explainer(gap_linear_model, preprocess=keep)
    photos = [noise(80, 40, seed=1), noise(40, 40, seed=2), noise(80, 40, seed=3)]
    together = explainer.explain(photos)
    alone = [explainer.explain(photo) for photo in photos]
    for a, b in zip(together, alone, strict=True):
        assert a.raw().shape == b.raw().shape
        np.testing.assert_allclose(a.raw(), b.raw(), rtol=1e-5, atol=1e-6)
    assert together[0].raw().shape != together[1].raw().shape


# -- the CLI ---------------------------------------------------------------------------------------


def _photos(folder: Path, sizes) -> Path:
    folder.mkdir()
    for i, size in enumerate(sizes):
        noise(*size, seed=10 + i).save(folder / f"p{i}.png")
    return folder


def test_cli_segmentation_writes_region_panel_page_and_resumes(models, tmp_path):
    photos = _photos(tmp_path / "in", [(48, 32), (40, 40)])
    out = tmp_path / "out"
    args = [
        str(photos),
        "-m",
        f"{models / 'tinyseg.py'}:TinySeg",
        "--task",
        "segmentation",
        "--labels",
        str(models / "labels.txt"),
        "--resize",
        "keep",
        "--input-size",
        "32",
        "-k",
        "2",
        "--panel",
        "--report",
        "--out",
        str(out),
    ]
    result = explain(*args)
    assert result.exit_code == 0, result.output
    report = strict_report(out)
    assert report["model"]["task"] == "segmentation"
    for image in report["results"]:
        assert image["status"] == "ok"
        for record in image["explanations"]:
            target = record["target"]
            assert 0 < target["pixel_share"] <= 1 and "box" not in target
            region = Image.open(out / record["region"])
            assert region.size == tuple(image["size"]) and region.mode == "L"
            assert Image.open(out / record["panel"]).width > 3 * region.width
        shares = [p["pixel_share"] for p in image["predictions"]]
        assert shares == sorted(shares, reverse=True)
    assert (out / "index.html").is_file()
    again = explain(*args, "--resume")
    assert again.exit_code == 0, again.output
    assert strict_report(out)["summary"]["resumed"] == 2


def test_cli_detection_writes_boxes_and_resumes(models, tmp_path):
    photos = _photos(tmp_path / "in", [(100, 70), (100, 70)])
    out = tmp_path / "out"
    args = [
        str(photos),
        "-m",
        f"{models / 'fixedbox.py'}:FixedBoxDetector",
        "--task",
        "detection",
        "--min-score",
        "0",
        "--panel",
        "--report",
        "--out",
        str(out),
    ]
    result = explain(*args)
    assert result.exit_code == 0, result.output
    report = strict_report(out)
    assert report["options"]["min_score"] == 0.0
    for image in report["results"]:
        [record] = image["explanations"]
        target = record["target"]
        assert target["index"] == 0 and target["class_index"] == 1
        assert target["box"] == pytest.approx(list(BOX))
        assert target["probability"] == pytest.approx(target["score"])
        overlay = np.asarray(Image.open(out / record["overlay"]).convert("RGB"))
        x0, y0, x1, y1 = (int(v) for v in BOX)
        assert (overlay[y0 + 3 : y1 - 3, x1] == 255).all()  # the box's white edge, drawn
        assert (out / record["panel"]).is_file()
    again = explain(*args, "--resume")
    assert again.exit_code == 0, again.output
    assert strict_report(out)["summary"]["resumed"] == 2


def test_cli_an_image_with_no_detection_kept_is_ok_with_a_warning(models, tmp_path):
    photo = tmp_path / "p.png"
    noise(100, 70, seed=0).save(photo)
    out = tmp_path / "out"
    model = f"{models / 'fixedbox.py'}:FixedBoxDetector"
    result = explain(
        str(photo), "-m", model, "--task", "detection", "--min-score", "1", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    [image] = strict_report(out)["results"]
    assert image["status"] == "ok" and image["explanations"] == []
    assert "kept no detection" in image["warnings"][0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "detection", "--min-score", "1.5"], "--min-score is a detection score, 0 to 1"),
        (["--task", "segmentation", "--min-score", "0.5"], "--min-score is for detectors"),
        (["--task", "detection", "--region", "MASK"], "--region is for segmentation models"),
        (
            ["--task", "segmentation", "--region", "SMALL"],
            "small.png is 20×10 but the image is 48×32",
        ),
        (["--task", "segmentation", "-t", "cloud"], "--target cloud is not a class"),
        (["--task", "segmentation", "-t", "7"], "--target 7 is out of range"),
        (["--task", "segmentaton"], "unknown task 'segmentaton'"),
    ],
)
def test_cli_bad_task_options_exit_2_before_any_image(models, tmp_path, extra, message):
    photo = tmp_path / "p.png"
    noise(48, 32, seed=0).save(photo)
    Image.new("L", (48, 32), 255).save(tmp_path / "mask.png")
    Image.new("L", (20, 10), 255).save(tmp_path / "small.png")
    replacements = {"MASK": str(tmp_path / "mask.png"), "SMALL": str(tmp_path / "small.png")}
    extra = [replacements.get(value, value) for value in extra]
    task = extra[extra.index("--task") + 1]
    source = "fixedbox.py:FixedBoxDetector" if task == "detection" else "tinyseg.py:TinySeg"
    out = tmp_path / "out"
    result = explain(
        str(photo),
        "-m",
        str(models / source),
        "--labels",
        str(models / "labels.txt"),
        *extra,
        "--out",
        str(out),
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (out / "predictions.json").exists()


def test_cli_models_lists_by_task():
    detection = invoke("models", "--task", "detection")
    assert detection.exit_code == 0
    names = detection.stdout.split()
    assert "torchvision:fasterrcnn_resnet50_fpn" in names
    assert "torchvision:retinanet_resnet50_fpn" in names
    assert not any("deeplab" in n or n == "torchvision:resnet50" for n in names)
    segmentation = invoke("models", "--task", "segmentation").stdout.split()
    assert "torchvision:deeplabv3_resnet50" in segmentation
    assert set(segmentation).isdisjoint(names)
    classification = invoke("models", "--task", "classification", "resnet50").stdout.split()
    assert "torchvision:resnet50" in classification
    assert "torchvision:fcn_resnet50" not in classification
    bad = invoke("models", "--task", "detector")
    assert bad.exit_code == 2 and "detection" in bad.output


def test_cli_task_names_are_the_library_s():
    from gradcam_cli.cli import TASK_NAMES
    from gradcam_cli.tasks import TASKS

    assert tuple(TASKS) == TASK_NAMES


def test_cli_layers_of_a_torchvision_detector_default_to_its_backbone_body():
    result = invoke("layers", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "--usable")
    assert result.exit_code == 0, result.output
    [default] = [line.split()[1] for line in result.stdout.splitlines() if line.startswith(">")]
    assert default.startswith("backbone.body.")
    assert "(detection)" in result.stdout.splitlines()[0]


def test_torchvision_segmentation_model_loads_with_its_own_preprocessing():
    from gradcam_cli.sources import load_model

    loaded = load_model("torchvision:deeplabv3_mobilenet_v3_large", pretrained=False)
    assert loaded.task == "segmentation"
    assert loaded.preprocess.resize == "keep" and loaded.preprocess.resize_shorter == 520
    assert loaded.labels[0] == "__background__" and "person" in loaded.labels
    detector = load_model("torchvision:ssdlite320_mobilenet_v3_large", pretrained=False)
    assert detector.task == "detection" and detector.preprocess.std == (1.0, 1.0, 1.0)
    assert detector.labels[1] == "person"


def test_aug_smooth_is_refused_for_a_segmentation_model(models):
    with pytest.raises(Exception, match="aug_smooth=True is for classifiers"):
        Explainer(_tiny_seg(models), task="segmentation", aug_smooth=True)


def test_json_of_a_classifier_has_no_task_keys(gap_linear_model, tmp_path):
    result = Explainer(gap_linear_model).explain(noise(32, 32, seed=0))
    report = json.loads(result.save(tmp_path / "out").read_text(encoding="utf-8"))
    [image] = report["results"]
    assert set(image["explanations"][0]["target"]) == {"index", "label", "probability", "score"}
    assert "region" not in image["explanations"][0]
    assert all(set(p) == {"index", "label", "probability", "score"} for p in image["predictions"])


def test_cli_layers_of_your_segmentation_model_default_to_its_backbone(models):
    spec = f"{models / 'tinyseg.py'}:TinySeg"
    result = invoke("layers", spec, "--task", "segmentation")
    assert result.exit_code == 0, result.output
    [default] = [line.split()[1] for line in result.stdout.splitlines() if line.startswith(">")]
    assert default == "backbone.3"  # not the head's 1×1 conv, which only repeats the logits
    assert "(segmentation)" in result.stdout.splitlines()[0]
    as_classifier = invoke("layers", spec)  # its [B, 3, H, W] output is no class scores
    assert as_classifier.exit_code == 2 and "with --task segmentation" in as_classifier.output


# -- every torchvision family ----------------------------------------------------------------------

THRESHOLD = {"fasterrcnn": "box_score_thresh"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "fasterrcnn_resnet50_fpn",  # Mask and Keypoint R-CNN: its box path, plus their heads
        "retinanet_resnet50_fpn",
        "fcos_resnet50_fpn",
        "ssdlite320_mobilenet_v3_large",  # SSD300's head, on a small backbone
    ],
)
def test_every_torchvision_detector_family_is_explained_on_the_photo(name):
    """Random weights with a zero score threshold (so something is detected), a small resize
    where the family takes one: the default layer, a map and boxes on the photo."""
    from torchvision.models import get_model

    family = name.split("_")[0]
    options = {THRESHOLD.get(family, "score_thresh"): 0.0}
    if "ssd" not in family:
        options.update(min_size=160, max_size=224)  # the photo resized less: a quicker test
    if "rcnn" in family:
        options.update(rpn_post_nms_top_n_test=100, box_detections_per_img=10)
    torch.manual_seed(0)
    model = get_model(name, weights=None, weights_backbone=None, **options).eval()
    explainer = Explainer(model, task="detection")
    [layer] = explainer.layers
    assert str(layer).startswith("backbone."), layer
    photo = noise(120, 90, seed=9)
    result = explainer.explain(photo, topk=2)
    assert len(result.targets) == 2
    for target in result.targets:
        x0, y0, x1, y1 = target.box
        assert -0.01 <= x0 <= x1 <= 120.01 and -0.01 <= y0 <= y1 <= 90.01
        raw = result.raw(target)
        assert np.isfinite(raw).all() and raw.min() >= 0
        assert result.overlay(target).size == (120, 90)
    scores = [t.score for t in result.targets]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_mobilenet_v3_large"])
def test_every_torchvision_segmentation_family_is_explained_on_the_photo(name):
    from gradcam_cli.sources import load_model

    loaded = load_model(f"torchvision:{name}", pretrained=False, input_size=96)
    explainer = Explainer(loaded)
    assert str(explainer.layers[0]).startswith("backbone.")
    result = explainer.explain(noise(120, 90, seed=9), topk=1)
    [target] = result.targets
    assert result.region(target).shape == (90, 120) and 0 < target.pixel_share <= 1
    assert np.isfinite(result.raw(target)).all()


def test_top_k_explains_the_background_only_after_every_other_class_present():
    from gradcam_cli.explainer import background_classes
    from gradcam_cli.tasks import SegmentationTask

    assert background_classes(["__background__", "cat", "Background", "bg ", "dog"]) == (0, 2, 3)
    logits = torch.zeros(2, 3, 10, 10)
    logits[0, 0] = 1.0  # image 0: background on 70 pixels, class 2 on 30
    logits[0, 2, :3] = 2.0
    logits[1, 0] = 1.0  # image 1: background alone

    def chosen(background, topk):
        scoring = SegmentationTask(background=background).scoring(TargetRequest(topk=topk), False)
        return scoring.choose(scoring.bind({"out": logits})).tolist()

    assert chosen((), 1) == [[0], [0]]  # by pixel share alone
    assert chosen((0,), 1) == [[2], [0]]  # the largest other class; background when alone
    assert chosen((0,), 3) == [[2, 0], [0, 3]]  # never a class on no pixel (3: the null slot)
