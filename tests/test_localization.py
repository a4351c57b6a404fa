"""Localization metrics, mask files and the gate: exact values on maps built by hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gradcam_cli.errors import ImageReadError, UsageError
from gradcam_cli.localization import (
    IOU_THRESHOLD,
    Gate,
    Localization,
    MaskSource,
    localization_record,
    localize,
    read_mask,
)

FULL = (0.0, 0.0, 64.0, 64.0)  # the model saw the whole 64×64 photo


def _square_mask(size=64, box=(16, 16, 32, 32)) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def test_uniform_map_scores_the_mask_share_exactly():
    mask = _square_mask()
    found = localize(np.ones((8, 8), np.float32), mask, FULL)
    assert found.mask_share == pytest.approx(256 / 4096)
    assert found.energy == pytest.approx(found.mask_share, abs=1e-9)


def test_peak_on_the_object_is_a_hit_and_most_energy_inside():
    raw = np.zeros((8, 8), np.float32)
    raw[2:4, 2:4] = 1.0  # cells 2..3 cover pixels 16..31: exactly the mask
    found = localize(raw, _square_mask(), FULL)
    assert found.hit
    assert found.energy > 0.6  # bilinear spill past the edge is the rest
    assert 0.5 < found.iou <= 1.0


def test_peak_elsewhere_is_a_miss():
    raw = np.zeros((8, 8), np.float32)
    raw[6, 6] = 1.0
    raw[2, 2] = 0.5
    found = localize(raw, _square_mask(), FULL)
    assert not found.hit
    assert 0.0 < found.energy < 0.5


def test_all_zero_map_is_a_miss_with_no_energy():
    found = localize(np.zeros((8, 8), np.float32), _square_mask(), FULL)
    assert (found.hit, found.energy, found.iou) == (False, 0.0, 0.0)


def test_iou_uses_the_documented_threshold():
    raw = np.zeros((8, 8), np.float32)
    raw[2:4, 2:4] = 1.0
    raw[5:7, 5:7] = IOU_THRESHOLD * 0.9  # below the threshold: not part of the region
    without = localize(raw, _square_mask(), FULL).iou
    raw[5:7, 5:7] = IOU_THRESHOLD * 1.1  # above: it joins the region, outside the mask
    assert localize(raw, _square_mask(), FULL).iou < without


def test_only_the_part_of_the_photo_the_model_saw_counts():
    # A 96×64 photo centre-cropped to 64×64: columns 0..15 and 80..95 were never seen.
    mask = np.zeros((64, 96), dtype=bool)
    mask[:, :16] = True  # the whole object lies outside the crop
    found = localize(np.ones((8, 8), np.float32), mask, (16.0, 0.0, 80.0, 64.0))
    assert found.mask_share == 0.0
    assert found.energy == 0.0
    assert not found.hit


def test_read_mask_accepts_label_images_0_255_and_alpha(tmp_path):
    expected = _square_mask()
    Image.fromarray(expected.astype(np.uint8)).save(tmp_path / "labels.png")  # values 0/1
    Image.fromarray(expected.astype(np.uint8) * 255).save(tmp_path / "white.png")
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 200  # the same colour everywhere: only alpha tells inside from outside
    rgba[..., 3] = expected * 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    for name in ("labels.png", "white.png", "alpha.png"):
        assert np.array_equal(read_mask(tmp_path / name, (64, 64)), expected), name


def test_read_mask_resizes_same_aspect_and_refuses_another(tmp_path):
    Image.fromarray(_square_mask(32, (8, 8, 16, 16)).astype(np.uint8) * 255).save(
        tmp_path / "half.png"
    )
    assert np.array_equal(read_mask(tmp_path / "half.png", (64, 64)), _square_mask())
    with pytest.raises(ImageReadError, match="aspect ratio"):
        read_mask(tmp_path / "half.png", (96, 64))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="cannot read mask"):
        read_mask(tmp_path / "broken.png", (64, 64))


def test_mask_folder_prefers_class_masks_then_index_then_image(tmp_path):
    for name in ("a.png", "a.cat.png", "b.png", "b.3.png", "sub/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4)).save(tmp_path / name)
    masks = MaskSource(tmp_path)
    assert masks.find("a", 3, "cat") == tmp_path / "a.cat.png"
    assert masks.find("a", 5, "dog") == tmp_path / "a.png"
    assert masks.find("b", 3, "x") == tmp_path / "b.3.png"
    assert masks.find("sub/c", 0, "x") == tmp_path / "sub/c.png"
    assert masks.find("missing", 0, "x") is None
    single = MaskSource(tmp_path / "a.png")
    assert single.find("anything", 0, "x") == tmp_path / "a.png"
    with pytest.raises(UsageError, match="no such file"):
        MaskSource(tmp_path / "nowhere")


def test_gate_reasons_and_record():
    found = Localization("m.png", hit=False, energy=0.25, iou=0.1, mask_share=0.05)
    gate = Gate(min_energy=0.4, require_hit=True)
    assert gate.shortfalls(found) == [
        "the map's maximum is outside the mask",
        "energy in mask 0.250 < 0.4",
    ]
    assert Gate(min_energy=0.2).shortfalls(found) == []
    assert Gate().shortfalls(None) == []  # no gate, nothing to fail
    assert gate.shortfalls(None) == ["no mask to measure against"]
    record = localization_record(found, gate)
    assert record["passed"] is False and record["energy"] == 0.25
    missing = localization_record(None, gate, error="no mask for 'x'")
    assert missing["passed"] is False and missing["hit"] is None
    assert set(record) == set(missing)
    assert localization_record(found, Gate())["passed"] is None
    with pytest.raises(UsageError, match="from 0 to 1"):
        Gate(min_energy=1.5)
