"""`gradcam concepts`: Deep Feature Factorization — the NMF against scikit-learn's, the concepts
the demo model has learnt, the memory bound, the caller's model left alone, and the command's
files and exit codes. The agreement with pytorch-grad-cam's DFF is in tests/test_peers.py."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import NMF
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.concept_outputs import concept_colours, concept_figure, concept_overlay
from gradcam_cli.concepts import find_concepts
from gradcam_cli.demo.scenes import CLASSES
from gradcam_cli.errors import LayerError, UsageError
from gradcam_cli.inputs import collect_inputs
from gradcam_cli.nmf import nmf, relative_error, solve_h
from gradcam_cli.sources import load_model

ROOT = Path(__file__).resolve().parents[1]
SCENES = ROOT / "sample_images" / "scenes"
ALL_SCENES = sorted(SCENES.glob("*.png"))  # one scene per class, and two with two objects
runner = CliRunner()


def _sklearn(x: np.ndarray, k: int, seed: int) -> NMF:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a ConvergenceWarning at max_iter: compared as it is
        model = NMF(n_components=k, init="random", random_state=seed)
        model.fit(x)
    return model


# -- the factorization ---------------------------------------------------------------------------


def test_nmf_is_scikit_learns_random_init_and_coordinate_descent():
    """Same definitions, same start: the same factors and the same number of sweeps (float32
    both: only the order of the sums differs)."""
    seed = 3
    rng = np.random.default_rng(seed)
    x = (rng.random((40, 12)) @ rng.random((12, 300))).astype(np.float32)  # rank 12 ≥ 0
    peer = _sklearn(x, 4, seed)
    found = nmf(torch.from_numpy(x), 4, seed=seed)
    assert found.iterations == peer.n_iter_
    np.testing.assert_allclose(found.h.numpy(), peer.components_, rtol=1e-3, atol=1e-4)
    w = peer.transform(x)  # scikit-learn's solve with H fixed, from W = 0: ours below
    solved = solve_h(torch.from_numpy(x.T.copy()), torch.from_numpy(peer.components_.T.copy()))
    np.testing.assert_allclose(solved.T.numpy(), w, rtol=1e-3, atol=1e-4)
    error = relative_error(torch.from_numpy(x), found.w, found.h)
    assert error == pytest.approx(peer.reconstruction_err_ / np.linalg.norm(x), rel=1e-4)


def test_nmf_of_an_exact_low_rank_matrix_reconstructs_it():
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.random((30, 3)) @ rng.random((3, 200))).astype(np.float64))
    found = nmf(x, 3, seed=0, max_iter=150, tol=1e-9)
    assert (found.w >= 0).all() and (found.h >= 0).all()
    assert relative_error(x, found.w, found.h) < 3e-3  # measured 1.9e-3 after 150 sweeps


# -- the concepts of the demo model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    return load_model("demo:shapes")


@pytest.fixture(scope="module")
def found(demo):
    return find_concepts(demo, ALL_SCENES, k=4)


def test_the_demo_models_four_concepts_are_its_four_shapes(found):
    """k = 4 on the six sample scenes: each concept votes for one shape, a different one each,
    and its strongest image is the scene of that shape alone (measured: votes ≥ 0.99)."""
    votes = [concept.votes[0].label for concept in found.concepts]
    assert sorted(votes) == sorted(CLASSES)
    for concept in found.concepts:
        assert concept.votes[0].probability > 0.9
        assert Path(found.images[concept.strongest[0]].input).stem == concept.votes[0].label
    assert [len(c.votes) for c in found.concepts] == [2] * 4  # top_classes=2


def test_result_shapes_shares_and_reconstruction(found):
    assert found.layer == "features" and found.channels == 64 and found.k == 4
    assert found.fitted_positions == 6 * 8 * 8 and not found.subsampled and found.converged
    assert 0 < found.reconstruction_error < 0.45  # measured 0.37
    for record in found.images:
        assert record.maps.shape == (4, 8, 8) and record.maps.dtype == np.float32
        assert (record.maps >= 0).all() and record.maps.max() > 0
        assert record.shares.sum() == pytest.approx(1.0, abs=1e-6)
    totals = np.sum([record.strengths for record in found.images], axis=0)
    assert (np.diff(totals) <= 0).all()  # numbered strongest first
    assert all(c.vector.shape == (64,) for c in found.concepts)


def test_the_vectors_votes_are_the_linear_head_on_them(found, demo):
    """For a GAP + linear head, the head on a map holding the vector everywhere is fc(vector)."""
    vectors = torch.from_numpy(np.stack([c.vector for c in found.concepts]))
    with torch.no_grad():
        probabilities = demo.model.fc(vectors).softmax(dim=1)
    for concept, row in zip(found.concepts, probabilities, strict=True):
        top = row.topk(2)
        assert [v.index for v in concept.votes] == top.indices.tolist()
        expected = top.values.tolist()
        assert [v.probability for v in concept.votes] == pytest.approx(expected, abs=1e-6)


def test_the_same_seed_gives_the_same_concepts_and_another_the_same_shapes(demo, found):
    again = find_concepts(demo, ALL_SCENES, k=4)
    for a, b in zip(found.images, again.images, strict=True):
        np.testing.assert_array_equal(a.maps, b.maps)
    other = find_concepts(demo, ALL_SCENES, k=4, seed=1)
    assert not np.array_equal(other.images[0].maps, found.images[0].maps)
    assert sorted(c.votes[0].label for c in other.concepts) == sorted(CLASSES)


def test_a_run_larger_than_the_memory_bound_fits_a_sample_and_solves_each_images_maps(demo):
    """20 of each image's 64 positions (64 channels × 4 bytes × 6 images × 20), then every
    image's maps with the concepts fixed: the same four shapes."""
    small = find_concepts(demo, ALL_SCENES, k=4, max_fit_bytes=64 * 4 * 6 * 20)
    assert small.subsampled and small.fitted_positions == 6 * 20
    assert all(record.maps.shape == (4, 8, 8) for record in small.images)
    assert sorted(c.votes[0].label for c in small.concepts) == sorted(CLASSES)


def test_a_vits_concepts_vote_as_its_class_token_and_a_layer_with_a_skip_around_is_refused():
    """timm's test_vit (random init, 6 blocks): at `blocks.4` every token, the class token too,
    holds the concept; the votes are the last block, the norm and the head on those tokens. The
    automatic layer, the last block's norm1, has the residual stream around it: refused."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_vit", pretrained=False).eval()
    found = find_concepts(net, ALL_SCENES[:2], k=2, layer="blocks.4", top_classes=3)
    assert found.channels == 64 and found.images[0].maps.shape == (2, 10, 10)
    vectors = torch.from_numpy(np.stack([c.vector for c in found.concepts]))
    with torch.no_grad():
        tokens = net.norm(net.blocks[5](vectors[:, None, :].expand(-1, 101, -1)))
        probabilities = net.forward_head(tokens).softmax(dim=1)
    for concept, row in zip(found.concepts, probabilities, strict=True):
        assert [v.index for v in concept.votes] == row.topk(3).indices.tolist()
    with pytest.raises(LayerError, match="blocks.5.norm1.*whole block"):
        find_concepts(net, ALL_SCENES[:1], k=2)


def test_photos_of_several_sizes_keep_their_own_maps_and_their_order(demo):
    """resize='keep': a wide photo's input is 256×128, its maps 8×16; the batch runs it apart
    from the square scenes, and the result lists the images as given."""
    keep = load_model("demo:shapes", resize="keep")
    wide = Image.open(ALL_SCENES[0]).convert("RGB").resize((256, 128))
    images = [ALL_SCENES[1], wide, ALL_SCENES[2]]
    found = find_concepts(keep, images, k=2, batch_size=3)
    assert [record.maps.shape for record in found.images] == [(2, 8, 8), (2, 8, 16), (2, 8, 8)]
    assert found.images[0].input == str(ALL_SCENES[1]) and found.images[1].input == "image 1"


def test_the_callers_model_is_left_as_found(demo):
    net = load_model("demo:shapes").model.train()
    state = {key: value.clone() for key, value in net.state_dict().items()}
    find_concepts(net, ALL_SCENES[:2], k=2, preprocess=demo.preprocess)
    assert net.training and all(p.requires_grad and p.grad is None for p in net.parameters())
    assert not any(m._forward_hooks for m in net.modules())
    for key, value in net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, state[key])


def test_refusals_name_what_to_give(demo):
    with pytest.raises(UsageError, match="at most 64"):
        find_concepts(demo, ALL_SCENES, k=65)
    with pytest.raises(UsageError, match="k=0"):
        find_concepts(demo, ALL_SCENES, k=0)
    with pytest.raises(UsageError, match="segmentation model"):
        find_concepts(replace(demo, task="segmentation"), ALL_SCENES, k=2)
    with pytest.raises(UsageError, match="one layer"):
        find_concepts(demo, ALL_SCENES, k=2, layer="features.15,features")


# -- pictures -----------------------------------------------------------------------------------


def test_the_overlay_colours_each_pixel_by_its_strongest_concept(found):
    """gist_rainbow at ⌊256 j / k⌋ (pytorch-grad-cam's colours); the photo at 128 px on the
    left, the legend on the right."""
    colours = concept_colours(4)
    assert colours.shape == (4, 3) and len({tuple(c) for c in colours}) == 4
    picture = concept_overlay(found, 0)
    assert picture.height == 128 and picture.width > 128
    figure = concept_figure(found, 1)
    assert figure.width >= 480 and figure.height > 176


# -- the command -------------------------------------------------------------------------------


def test_the_command_writes_overlays_figures_and_the_report(tmp_path):
    (tmp_path / "in").mkdir()
    for scene in ALL_SCENES:
        (tmp_path / "in" / scene.name).write_bytes(scene.read_bytes())
    (tmp_path / "in" / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    args = ["concepts", str(tmp_path / "in"), "-m", "demo:shapes", "--k", "4", "-o", str(out)]
    result = runner.invoke(app, [*args, "--save-raw", "--top-classes", "3", "--json"])
    assert result.exit_code == 1, result.output  # one input could not be read
    report = json.loads(result.stdout)
    assert report == json.loads((out / "concepts.json").read_text())
    assert report["summary"]["images"] == 6 and report["skipped"][0]["input"].endswith("broken.png")
    assert [c["concept"] for c in report["concepts"]] == [1, 2, 3, 4]
    assert all(len(c["votes"]) == 3 for c in report["concepts"])
    for concept in report["concepts"]:
        assert Image.open(out / concept["figure"]).mode == "RGB"
    for image in report["images"]:
        assert Image.open(out / image["overlay"]).height == 128
        assert np.load(out / image["raw"]).shape == (4, 8, 8)
        assert sum(image["shares"]) == pytest.approx(1.0, abs=1e-5)
    assert report["factorization"]["positions"] == 6 * 64
    assert "concept 1: " in result.stderr
    skipped: list[str] = []  # a later run over the folder leaves these pictures out
    found = collect_inputs([str(tmp_path)], on_skip=skipped.append)
    assert {Path(item.path).parent.name for item in found} == {"in"}
    assert "gradcam concepts' report" in skipped[0]
    documented = (ROOT / "docs" / "concepts.md").read_text().split("## Outputs")[1]
    keys = {*report, *report["factorization"], *report["concepts"][0], *report["images"][0]}
    keys |= {*report["summary"], *report["concepts"][0]["votes"][0], *report["skipped"][0]}
    assert not {key for key in keys if f"`{key}`" not in documented}, "docs/concepts.md"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--k", "0"], "--k 0"),
        (["--top-classes", "0"], "--top-classes 0"),
        (["--seed", "-1"], "--seed -1"),
    ],
)
def test_bad_options_exit_2_before_the_model_is_loaded(tmp_path, option, message):
    """The model named does not exist: the option's error comes first."""
    result = runner.invoke(
        app, ["concepts", str(SCENES), "-m", "no_such_model_anywhere", *option, "-o", str(tmp_path)]
    )
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert not any(tmp_path.iterdir())
