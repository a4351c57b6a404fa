"""Faithfulness metrics (gradcam_cli/faithfulness.py) against the peers that define them.

torchcam 0.5's DeletionInsertionMetric and ClassificationMetric, and pytorch-grad-cam 1.5.7's
ROAD metrics run on the same model, input and map as ours. The peers take the map from a CAM
extractor; `FixedMap` is one that returns a given map, so their metric code runs unchanged.

The model is a seeded little CNN with a sharpened head, so that its probabilities move a lot under
perturbation: agreement to 1e-4 then means something (a random-init resnet's softmax is flat
and would agree with almost anything). Each cross-check also shows the numbers are not flat.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from functools import partial

import numpy as np
import pytest
import torch
from helpers import gap_linear_net
from torch import nn

from gradcam_cli.errors import UsageError
from gradcam_cli.faithfulness import (
    METRIC_NAMES,
    GateRule,
    MetricSettings,
    baseline_map,
    center_map,
    check_baselines,
    check_gates,
    check_metrics,
    edge_map,
    linear_imputation,
    measure,
    parse_gate,
    random_map,
)

SIZE = 32


def tiny_model() -> nn.Module:
    net = gap_linear_net()
    with torch.no_grad():
        net[-1].weight.mul_(40)  # peaked softmax: the scores react to the perturbations
    return net.eval()


def smooth(channels: int, seed: int, cells: int = 4) -> torch.Tensor:
    """A smooth random field [channels, SIZE, SIZE]: a `cells`² grid upsampled bilinearly."""
    coarse = torch.randn(1, channels, cells, cells, generator=torch.Generator().manual_seed(seed))
    fine = nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear")
    return fine[0]


@pytest.fixture(scope="module")
def net():
    return tiny_model()


@pytest.fixture(scope="module")
def image():
    noise = torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return smooth(3, seed=2, cells=8) + 0.3 * noise


@pytest.fixture(scope="module")
def target(net, image):
    with torch.no_grad():
        return int(net(image[None]).argmax())


def positive_map() -> torch.Tensor:
    """No ties (upsampling alone repeats border rows): ROAD's thresholds split it as the
    percentiles say."""
    jitter = 1e-3 * torch.randn(SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    return smooth(1, seed=3)[0] + 5.0 + jitter


def relu_map() -> torch.Tensor:
    """A third or so exactly zero, as after Grad-CAM's ReLU: ties the ranking must break alike."""
    return torch.relu(smooth(1, seed=4)[0] + 0.3)


def predictor(net: nn.Module):
    def predict(batch: torch.Tensor) -> torch.Tensor:
        return net(batch)

    return predict


class FixedMap:
    """A torchcam CAM extractor that returns one given map (normalised as torchcam's are)."""

    def __init__(self, model: nn.Module, raw: torch.Tensor):
        self.model, self.raw = model, raw

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        from torchcam.methods.core import _CAM

        cam = self.raw[None].clone().float()
        return [_CAM._normalize(cam) if normalized else cam]

    def fuse_cams(self, cams):
        return cams[0]

    @contextmanager
    def _hooks_off(self):
        yield


def scaled(raw: torch.Tensor) -> torch.Tensor:
    from torchcam.methods.core import _CAM

    return _CAM._normalize(raw[None].clone().float())[0]


# -- cross-checks with the peers ----------------------------------------------------------------


@pytest.mark.parametrize("make_map", [positive_map, relu_map], ids=["no-ties", "relu-ties"])
@pytest.mark.parametrize("score", ["probability", "logit"])
def test_deletion_insertion_equal_torchcam(net, image, target, make_map, score):
    from torchcam.metrics import DeletionInsertionMetric

    raw = make_map()
    logits_fn = partial(torch.softmax, dim=-1) if score == "probability" else None
    theirs = DeletionInsertionMetric(FixedMap(net, raw), logits_fn)  # steps=20, zeros baseline
    theirs.update(image[None], class_idx=target)
    expected = theirs.summary()

    ours = measure(
        predictor(net),
        image,
        raw,
        target,
        ["deletion", "insertion"],
        MetricSettings(score=score),
    )
    assert ours.values["deletion_auc"] == pytest.approx(expected["deletion_auc"], abs=1e-4)
    assert ours.values["insertion_auc"] == pytest.approx(expected["insertion_auc"], abs=1e-4)
    # Not flat: this model's score moves a lot along both curves.
    for curve in ours.curves.values():
        assert max(curve.y) - min(curve.y) > 0.2
    assert len(ours.curves["deletion_auc"].x) == 21  # 1024 pixels: 0, 52, …, 988, 1024


def test_deletion_differs_from_torchcam_with_another_order(net, image, target):
    """The cross-check can fail: ranking the map from low to high moves the AUC well past 1e-4."""
    from torchcam.metrics import DeletionInsertionMetric

    raw = positive_map()
    theirs = DeletionInsertionMetric(FixedMap(net, raw), partial(torch.softmax, dim=-1))
    theirs.update(image[None], class_idx=target)
    ours = measure(predictor(net), image, -raw, target, ["deletion"])
    assert abs(ours.values["deletion_auc"] - theirs.summary()["deletion_auc"]) > 1e-2


@pytest.mark.parametrize("make_map", [positive_map, relu_map], ids=["no-ties", "relu-ties"])
@pytest.mark.parametrize("score", ["probability", "logit"])
def test_drop_and_increase_equal_torchcam(net, image, target, make_map, score):
    from torchcam.metrics import ClassificationMetric

    raw = make_map()
    logits_fn = partial(torch.softmax, dim=-1) if score == "probability" else None
    theirs = ClassificationMetric(FixedMap(net, raw), logits_fn)
    theirs.update(image[None], class_idx=target)
    expected = theirs.summary()

    ours = measure(predictor(net), image, raw, target, ["drop"], MetricSettings(score=score))
    assert ours.values["average_drop"] == pytest.approx(expected["avg_drop"], abs=1e-6)
    assert ours.values["increase_in_confidence"] == expected["conf_increase"]


def test_drop_is_not_trivial(net, image, target):
    """Masking by the map changes this model's confidence: the equality above is informative."""
    drops = [
        measure(predictor(net), image, m(), target, ["drop"]) for m in (positive_map, relu_map)
    ]
    assert max(d.values["average_drop"] for d in drops) > 0.05


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy on torch tensors, in road.py
@pytest.mark.parametrize(
    ("percentiles", "morf_class", "lerf_class"),
    [
        ((80,), "ROADMostRelevantFirst", None),
        ((20,), None, "ROADLeastRelevantFirst"),
        (
            (10, 20, 30, 40, 50, 60, 70, 80, 90),
            "ROADMostRelevantFirstAverage",
            "ROADLeastRelevantFirstAverage",
        ),
    ],
)
def test_road_equal_pytorch_grad_cam(net, image, target, percentiles, morf_class, lerf_class):
    from pytorch_grad_cam.metrics import road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    raw = positive_map()
    cams = scaled(raw)[None].numpy()
    targets = [ClassifierOutputSoftmaxTarget(target)]
    settings = MetricSettings(road_percentiles=percentiles, road_seed=7)
    for name, class_name in (("road_morf", morf_class), ("road_lerf", lerf_class)):
        if class_name is None:
            continue
        cls = getattr(road, class_name)
        metric = cls(percentiles) if class_name.endswith("Average") else cls(percentiles[0])
        torch.manual_seed(7)  # their noise comes from the global generator
        with torch.no_grad():
            expected = float(metric(image[None], cams, targets, net)[0])
        ours = measure(predictor(net), image, raw, target, [name], settings)
        assert ours.values[name] == pytest.approx(expected, abs=1e-3)
        assert abs(expected) > 0.02  # the imputation moves this model's probability


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("most_relevant", [True, False], ids=["morf", "lerf"])
def test_road_images_equal_pytorch_grad_cam(net, image, target, most_relevant):
    """The imputed copies themselves, noise included: the same pixels replaced, the same values."""
    from pytorch_grad_cam.metrics import road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    cls = road.ROADMostRelevantFirst if most_relevant else road.ROADLeastRelevantFirst
    raw = positive_map()
    torch.manual_seed(11)
    _, theirs = cls(30)(
        image[None],
        scaled(raw)[None].numpy(),
        [ClassifierOutputSoftmaxTarget(target)],
        net,
        return_visualization=True,
    )
    batches = []

    def predict(batch):
        batches.append(batch.clone())
        return net(batch)

    name = "road_morf" if most_relevant else "road_lerf"
    settings = MetricSettings(road_percentiles=(30,), road_seed=11)
    measure(predict, image, raw, target, [name], settings)
    reference, ours = torch.cat(batches)
    assert torch.equal(reference, image)
    assert torch.allclose(ours, theirs[0], atol=1e-4)
    replaced = (ours != image).any(0)
    # Kept: the pixels strictly below the 30th percentile, at 0.3 · 1023 = 306.9 between ranks.
    assert int(replaced.sum()) == SIZE * SIZE - 307


def test_road_depends_on_the_percentile(net, image, target):
    """The score change moves with the share replaced: the cross-check above is not flat."""
    settings = MetricSettings(road_percentiles=(20, 80))
    ours = measure(predictor(net), image, positive_map(), target, ["road"], settings)
    for name in ("road_morf", "road_lerf"):
        first, last = ours.curves[name].y
        assert abs(first - last) > 0.05
    assert ours.curves["road_morf"].x == pytest.approx((0.8, 0.2))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_linear_imputation_equals_scipy_solve():
    """Our conjugate-gradient solve against pytorch-grad-cam's direct one, noise off."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    values = smooth(3, seed=5, cells=6)
    cam = positive_map()
    for percentile in (10, 50, 90):
        threshold = np.percentile(cam.numpy(), percentile)
        known = cam < threshold
        expected = NoisyLinearImputer(noise=0.0)(values, known.float())
        ours = linear_imputation(values, known)
        assert torch.allclose(ours, expected, atol=1e-4)
        assert torch.equal(ours[:, known], values[:, known])


def test_imputation_restores_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        linear_imputation(smooth(3, seed=5), positive_map() < 5.0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_imputation_with_nothing_known_is_finite():
    """A constant map removes every pixel at every MoRF threshold: no NaN but zeros, as
    pytorch-grad-cam's spsolve gives."""
    values = smooth(3, seed=5)
    filled = linear_imputation(values, torch.zeros(SIZE, SIZE, dtype=torch.bool))
    assert torch.equal(filled, torch.zeros_like(values))


def test_imputation_of_a_blank_channel_stays_blank():
    """A channel whose known pixels are all 0 converges at once; the others go on, finite."""
    values = smooth(3, seed=5)
    values[1] = 0.0
    known = positive_map() < 5.0
    filled = linear_imputation(values, known)
    assert torch.equal(filled[1], torch.zeros(SIZE, SIZE))
    assert bool(filled.isfinite().all()) and not torch.equal(filled[0], values[0])


def test_constant_map_gives_finite_numbers(net, image, target):
    found = measure(predictor(net), image, torch.zeros(SIZE, SIZE), target)
    assert set(found.values) == set(METRIC_NAMES)
    assert all(np.isfinite(v) for v in found.values.values())


def test_rank_selection_replaces_exact_shares(net, image, target):
    """road_selection='rank' removes exactly (100 − p)% even on a map full of ties."""
    from gradcam_cli.faithfulness import _road_kept

    tied = scaled(relu_map())
    zeros = int((tied == 0).sum())
    assert zeros > SIZE * SIZE * 0.2
    for most_relevant in (True, False):
        kept = _road_kept(tied, 30, most_relevant, "rank")
        assert int(kept.sum()) == int(SIZE * SIZE * 0.3)
    # pytorch-grad-cam's threshold replaces every tied zero at once when they straddle it.
    assert int(_road_kept(tied, 10, True, "threshold").sum()) == 0


# -- batching and cost -----------------------------------------------------------------------------


def test_batch_size_does_not_change_the_numbers(net, image, target):
    calls: list[int] = []

    def counting(batch):
        calls.append(len(batch))
        return net(batch)

    settings = MetricSettings(road_percentiles=(30, 70))
    one = measure(counting, image, relu_map(), target, METRIC_NAMES, settings, batch_size=1)
    assert set(calls) == {1}
    calls.clear()
    seven = measure(counting, image, relu_map(), target, METRIC_NAMES, settings, batch_size=7)
    assert max(calls) == 7 and sum(calls) == seven.forward_passes
    for name in METRIC_NAMES:
        assert seven.values[name] == pytest.approx(one.values[name], abs=1e-6)
    # 1 reference + 19 + 19 interior + 1 shared substrate + 1 masked + 2 × 2 ROAD copies
    assert seven.forward_passes == 45


def test_different_substrates_do_not_share_the_blank_image(net, image, target):
    settings = MetricSettings(insertion_substrate="blur")
    found = measure(
        predictor(net), image, positive_map(), target, ["deletion", "insertion"], settings
    )
    assert found.forward_passes == 1 + 20 + 20
    plain = measure(predictor(net), image, positive_map(), target, ["deletion", "insertion"])
    assert plain.forward_passes == 1 + 19 + 19 + 1
    assert found.values["insertion_auc"] != pytest.approx(plain.values["insertion_auc"], abs=1e-4)


def test_road_noise_is_seeded(net, image, target):
    def road(seed):
        settings = MetricSettings(road_percentiles=(50,), road_seed=seed, road_noise=0.5)
        return measure(predictor(net), image, positive_map(), target, ["road_morf"], settings)

    assert road(3).values == road(3).values
    assert road(3).values != road(4).values


def test_predict_gets_an_inference_mode_batch_on_the_image_device(net, image, target):
    seen = []

    def predict(batch):
        seen.append((batch.shape[1:], batch.device, torch.is_inference_mode_enabled()))
        return net(batch)

    measure(predict, image, positive_map(), target, ["drop"])
    assert seen == [((3, SIZE, SIZE), image.device, True)]


# -- baselines -------------------------------------------------------------------------------------


def test_center_map_peaks_at_the_centre():
    peak = center_map((31, 41))
    assert peak.shape == (31, 41)
    assert divmod(int(peak.argmax()), 41) == (15, 20)
    assert float(peak.max()) == pytest.approx(1.0)
    assert float(peak[0, 0]) < 0.1  # σ = 31 / 4: the corner is beyond 2σ
    assert torch.equal(peak, peak.flip(0)) and torch.equal(peak, peak.flip(1))


def test_edge_map_is_high_on_an_edge_and_zero_on_flat_areas():
    picture = torch.zeros(3, 20, 20)
    picture[:, :, 10:] = 1.0  # a vertical edge between columns 9 and 10
    edges = edge_map(picture)
    assert edges.shape == (20, 20)
    assert edges[:, 9:11].min() > 3.0  # Sobel: 4 × the grey step of 1
    assert float(edges[:, :8].abs().max()) == 0.0 and float(edges[:, 12:].abs().max()) == 0.0


def test_random_map_is_seeded():
    assert torch.equal(random_map((8, 9), seed=1), random_map((8, 9), seed=1))
    assert not torch.equal(random_map((8, 9), seed=1), random_map((8, 9), seed=2))
    values = random_map((64, 64), seed=0)
    assert values.shape == (64, 64) and 0.0 <= float(values.min()) and float(values.max()) < 1.0


def test_baseline_map_dispatches_by_name(image):
    assert torch.equal(baseline_map("edges", image), edge_map(image))
    assert torch.equal(baseline_map("center", image), center_map((SIZE, SIZE)))
    assert torch.equal(baseline_map("random", image, seed=3), random_map((SIZE, SIZE), seed=3))
    with pytest.raises(UsageError, match="unknown baseline 'sobel'"):
        baseline_map("sobel", image)


def test_check_baselines():
    assert check_baselines(["edges", "random", "edges"]) == ("random", "edges")
    with pytest.raises(UsageError, match="Did you mean 'center'"):
        check_baselines(["centre"])


# -- names and gates -------------------------------------------------------------------------------


def test_check_metrics_expands_groups_in_a_fixed_order():
    assert check_metrics(["road", "deletion_auc", "drop"]) == (
        "deletion_auc",
        "average_drop",
        "increase_in_confidence",
        "road_morf",
        "road_lerf",
    )
    assert check_metrics(["all"]) == METRIC_NAMES


@pytest.mark.parametrize(
    ("name", "hint"),
    [("insertion_aux", "Did you mean .*'insertion_auc'"), ("delete", "Did you mean 'deletion'")],
)
def test_check_metrics_refuses_unknown_names(name, hint):
    with pytest.raises(UsageError, match=hint):
        check_metrics([name])


def test_parse_gate():
    rule = parse_gate(" insertion_auc >= 0.4 ")
    assert rule == GateRule("insertion_auc", ">=", 0.4)
    assert rule.passes(0.4) and not rule.passes(0.39) and not rule.passes(float("nan"))
    assert rule.shortfall(0.312) == "insertion_auc 0.312 < 0.4"
    assert rule.shortfall(0.5) is None
    upper = parse_gate("deletion_auc<=0.2")
    assert upper.passes(0.1) and not upper.passes(0.3)
    assert parse_gate("hit>=1").passes(True) and not parse_gate("hit>=1").passes(False)
    assert str(parse_gate("road_morf<=-0.05")) == "road_morf<=-0.05"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("insertion_auc", "compares nothing"),
        ("insertion_auc>0.4", "'>' is not supported"),
        ("insertion_auc==0.4", "'==' is not supported"),
        ("insertion_auc>=high", "'high' is not a number"),
        ("insertion_auc>=nan", "finite number"),
        ("insertion_auc>=", "no value after '>='"),
        (">=0.4", "unknown name ''"),
        ("insertion_auc=>0.4", "'=>' is not supported"),
        ("insertoin_auc>=0.4", "Did you mean .*'insertion_auc'"),
        ("energi<=0.3", "Did you mean 'energy'"),
    ],
)
def test_parse_gate_refuses_impossible_expressions(text, message):
    with pytest.raises(UsageError, match=message):
        parse_gate(text)


def test_check_gates_needs_what_the_gate_tests():
    check_gates([parse_gate("road_lerf>=0")], check_metrics(["road"]), has_mask=False)
    with pytest.raises(UsageError, match="metrics=insertion"):
        check_gates([parse_gate("insertion_auc>=0.4")], ["deletion_auc"], has_mask=True)
    with pytest.raises(UsageError, match="needs a mask"):
        check_gates([parse_gate("energy>=0.5")], METRIC_NAMES, has_mask=False)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": 0}, "steps=0"),
        ({"deletion_substrate": "blurr"}, "Did you mean 'blur'"),
        ({"score": "softmax"}, "score='softmax'"),
        ({"road_percentiles": (0, 50)}, "strictly between 0 and 100"),
        ({"road_noise": -1.0}, "road_noise=-1.0"),
        ({"road_selection": "ranks"}, "Did you mean 'rank'"),
    ],
)
def test_settings_refuse_bad_values(settings, message):
    with pytest.raises(UsageError, match=message):
        MetricSettings(**settings)


def test_importing_the_module_does_not_import_torch():
    """The CLI checks --metrics and --gate before it loads torch."""
    code = "import sys, gradcam_cli.faithfulness; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
