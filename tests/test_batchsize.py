"""`--batch-size auto` (batchsize.py): sized by the model's work, bounded by the memory at hand."""

from __future__ import annotations

import itertools
import json

import pytest

from gradcam_cli import batchsize
from gradcam_cli.batchsize import (
    AUTO,
    MAX_AUTO_BATCH_SIZE,
    MEMORY_SHARE,
    PHOTO_ALLOWANCE,
    auto_batch_size,
    choose_batch_size,
    parse_batch_size,
)
from gradcam_cli.errors import UsageError
from gradcam_cli.job import prepare_job

MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("activations", "expected"),
    [(122 * MiB, 8), (29 * MiB, 32), (6 * MiB, MAX_AUTO_BATCH_SIZE), (2 * GiB, 1)],
)
def test_the_batch_follows_what_a_forward_writes_when_memory_is_plenty(activations, expected):
    assert auto_batch_size(activations, images=10_000, memory_budget=1 << 40) == expected


def test_every_choice_is_a_power_of_two_within_the_images_and_the_memory_share():
    budgets = [0, 50 * MiB, 600 * MiB, 2 * GiB, 16 * GiB, 1 << 40]
    activations = [0, 1, 300_000, 6 * MiB, 122 * MiB, 3 * GiB]
    for budget, per_image, images in itertools.product(budgets, activations, [1, 3, 17, 10**6]):
        size = auto_batch_size(per_image, images, budget)
        assert size & (size - 1) == 0 and 1 <= size <= min(images, MAX_AUTO_BATCH_SIZE)
        if size > 1:  # one image always runs; the OOM splitter is its safety net
            assert size * (per_image + PHOTO_ALLOWANCE) <= budget // MEMORY_SHARE


def test_a_number_is_used_as_given_and_bad_values_are_refused():
    assert choose_batch_size(12, 122 * MiB, 100, device=None) == 12
    assert parse_batch_size("auto") == parse_batch_size(" AUTO ") == AUTO
    assert parse_batch_size("16") == parse_batch_size(16) == 16
    for bad in ("0", "-3", "1.5", "eight", "", 5000):
        with pytest.raises(UsageError, match="batch_size="):
            parse_batch_size(bad)


def test_cgroup_limit_bounds_the_memory_seen(tmp_path, monkeypatch):
    (tmp_path / "memory.max").write_text(f"{3 * GiB}\n")
    (tmp_path / "memory.current").write_text(f"{1 * GiB}\n")
    monkeypatch.setattr(batchsize, "_cgroup_path", lambda: "/nowhere")
    assert batchsize._cgroup_headroom(str(tmp_path)) == 2 * GiB
    (tmp_path / "memory.max").write_text("max\n")
    assert batchsize._cgroup_headroom(str(tmp_path)) is None


def _scenes(folder, count):
    from PIL import Image

    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (16, 12), (i * 3 % 256, 80, 160)).save(folder / f"s{i:03d}.png")
    return folder


def test_a_job_sizes_its_batch_from_the_probe_and_the_memory(tmp_path, monkeypatch):
    inputs = _scenes(tmp_path / "in", 70)
    monkeypatch.setattr(batchsize, "_system_available_memory", lambda: 64 * GiB)
    roomy = prepare_job(inputs, "demo:shapes", out=tmp_path / "a", heatmap=False)
    per_image = roomy.explainer.probe.activation_bytes
    assert 1 * MiB < per_image < 32 * MiB  # the demo model at 128²: about 6 MiB
    assert roomy.run_options.batch_size == MAX_AUTO_BATCH_SIZE
    few = prepare_job(sorted(inputs.iterdir())[:5], "demo:shapes", out=tmp_path / "b")
    assert few.run_options.batch_size == 4  # no more than there are images


def test_a_tiny_memory_budget_runs_one_image_at_a_time_and_the_report_says_so(
    tmp_path, monkeypatch
):
    inputs = _scenes(tmp_path / "in", 6)
    monkeypatch.setattr(batchsize, "_system_available_memory", lambda: 200 * MiB)
    job = prepare_job(inputs, "demo:shapes", out=tmp_path / "out", heatmap=False)
    assert job.run_options.batch_size == 1
    report = job.run()
    assert report.errors == 0 and len(report.results) == 6
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert written["options"]["batch_size"] == 1
