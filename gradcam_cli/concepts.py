"""`gradcam concepts`: Deep Feature Factorization (Collins, Achanta & Süsstrunk 2018).

Not one class's map but the concepts a layer has learnt: the layer's activations of every image
of the run, A [C, N·h·w] (channels × positions), are factored into k non-negative concepts,
A ≈ W H: a column of W [C, k] is a concept's channel vector, a row of H [k, N·h·w] where it
is in each image (its map). Each concept votes for the classes the model's head gives it.

    from gradcam_cli.concepts import find_concepts, write_outputs

    found = find_concepts("demo:shapes", ["a.png", "b.png"], k=4)
    found.concepts[0].votes, found.images[0].shares     # classes; each concept's share
    write_outputs(found, "runs/concepts")                # overlays, figures, concepts.json

Choices, each documented in docs/concepts.md:

- One factorization over the whole run, as pytorch-grad-cam's `dff` factors a batch (its
  tutorial passes one image): the concepts are shared by the images, so each concept's images
  can be ranked. The NMF is scikit-learn's (random init, coordinate descent; nmf.py), seeded.
- Offset: each channel's minimum over the run is subtracted first (a layer may output negative
  values) and added back to the concept vectors, as pytorch-grad-cam does.
- A concept's vector: its column of W times the peak of its maps over the run, plus the offset:
  the layer's activation where the concept is strongest. pytorch-grad-cam takes W's column as
  the solver leaves it, whose scale is arbitrary (W D and D⁻¹ H factor A as well: another seed
  can reach the same factorization with other scales), and the head's softmax is not
  indifferent to scale.
- Memory: the factorization is fitted on at most `max_fit_bytes` of activations (float32).
  When the run's activations fit, they are all used and each image's maps are its part of H.
  Otherwise each image gives the same number of positions, drawn with the seed, and a second
  pass computes every image's maps with the concepts fixed (nmf.solve_h): memory then holds the
  sample, one batch and each image's k maps.
- Class votes: the model after the layer, run on the layer's output holding the concept's
  vector at every position, a token layer's class token too (`engine._HeadRunner`), then
  softmax (sigmoid for a single logit; a model's own probabilities as they are). For a
  global-average-pool + linear head this is the linear layer on the vector, pytorch-grad-cam's
  `model.fc(concepts)`. It needs the rest of the model to read nothing else from the image: a
  layer with a skip connection around it (a ViT block's norm1) is refused before any image.
- Strength of a concept in an image: the mean of its map times the norm of W's column (its part
  of the reconstructed activations, whatever the factors' scales); its share: strength / the
  image's total. Concepts are numbered from 1 by their total strength over the run, strongest
  first; each concept's images are ranked by share.

Classifiers only: a segmentation model's or a detector's head does not give class votes.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .conceptresult import (
    CONCEPTS_NAME,
    SCHEMA_VERSION,
    Concept,
    ConceptResult,
    ImageConcepts,
    Vote,
)
from .errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .explainer import Explainer, ImageInput
    from .preprocess import Preprocess
    from .sources import LoadedModel

__all__ = [
    "SCHEMA_VERSION",
    "CONCEPTS_NAME",
    "DEFAULT_K",
    "DEFAULT_TOP_CLASSES",
    "FIT_BYTES",
    "SHEET_IMAGES",
    "Vote",
    "Concept",
    "ImageConcepts",
    "ConceptResult",
    "find_concepts",
    "write_outputs",
    "run_concepts",
    "check_k",
    "check_top_classes",
    "check_seed",
]

DEFAULT_K = 5
DEFAULT_TOP_CLASSES = 2  # pytorch-grad-cam's tutorial shows two
FIT_BYTES = 256 * 2**20  # activations the factorization is fitted on, at most
SHEET_IMAGES = 8  # images on a concept's figure, and listed under it in the JSON

Progress = Callable[[int, int], None]


# -- options -------------------------------------------------------------------------------------


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"k={k!r}: the number of concepts is a whole number ≥ 1, such as 5")
    return k


def check_top_classes(top_classes: int) -> int:
    if isinstance(top_classes, bool) or not isinstance(top_classes, int) or top_classes < 1:
        raise UsageError(
            f"top_classes={top_classes!r}: the classes shown per concept, a whole number ≥ 1"
        )
    return top_classes


def check_seed(seed: int) -> int:
    """NumPy's RandomState draws the start: a whole number 0 to 2³² − 1."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UsageError(f"seed={seed!r}: give a whole number from 0 to {2**32 - 1}")
    return seed


# -- the factorization ---------------------------------------------------------------------------


def find_concepts(
    model: nn.Module | LoadedModel | str,
    images: ImageInput | Sequence[ImageInput],
    *,
    k: int = DEFAULT_K,
    layer: str | nn.Module | None = None,
    top_classes: int = DEFAULT_TOP_CLASSES,
    seed: int = 0,
    batch_size: int | str = "auto",
    device: str | torch.device | None = None,
    preprocess: Preprocess | None = None,
    labels: Sequence[str] | None = None,
    max_fit_bytes: int = FIT_BYTES,
    progress: Progress | None = None,
) -> ConceptResult:
    """Factor the activations of `images` at `layer` into `k` concepts (module docstring;
    docs/concepts.md).

    `model`, `layer`, `device`, `preprocess`, `labels`: as `Explainer` takes them (`layer`
    None: the automatic choice). `images`: paths, PIL images or H×W×3 uint8 arrays; one that
    cannot be read is skipped and listed in `skipped`. `top_classes`: the votes kept per
    concept. `seed`: the factorization's start (and the sample, when one is drawn).
    `max_fit_bytes`: the activations the factorization is fitted on, at most. `progress(done,
    total)`: after each batch. The caller's model is left as it was found.
    """
    run = _Run(
        model,
        k=k,
        layer=layer,
        top_classes=top_classes,
        seed=seed,
        batch_size=batch_size,
        device=device,
        preprocess=preprocess,
        labels=labels,
        max_fit_bytes=max_fit_bytes,
    )
    return run.run(images, progress)


class _Run:
    """The factorization made ready: options checked, the model loaded, the layer resolved, so
    that a bad value fails before any image (and before `run_concepts` takes the folder)."""

    def __init__(
        self,
        model: nn.Module | LoadedModel | str,
        *,
        k: int = DEFAULT_K,
        layer: str | nn.Module | None = None,
        top_classes: int = DEFAULT_TOP_CLASSES,
        seed: int = 0,
        batch_size: int | str = "auto",
        device: str | torch.device | None = None,
        preprocess: Preprocess | None = None,
        labels: Sequence[str] | None = None,
        max_fit_bytes: int = FIT_BYTES,
    ):
        from .batchsize import parse_batch_size
        from .sources import as_loaded_model

        self.started = time.perf_counter()
        self.k, self.top_classes = check_k(k), check_top_classes(top_classes)
        self.seed, self.max_fit_bytes = check_seed(seed), max_fit_bytes
        self.batch_size = parse_batch_size(batch_size)
        # (position in the inputs, input, crop box, image) of each image read, in the order
        # its activations came (grouped by input size, as resize='keep' makes them)
        self.read: list[tuple[int, str, tuple[float, float, float, float], ImageInput]] = []
        self.skipped: list[tuple[str, str]] = []  # (input, why) of the images not read
        self.loaded = as_loaded_model(model, preprocess=preprocess, labels=labels)
        self.explainer = _explainer(self.loaded, layer, device)
        [self.ref] = self.explainer.layers
        channels = self._channels()
        if channels is not None and self.k > channels:
            raise UsageError(
                f"k={self.k} concepts from layer '{self.ref}', which has {channels} channels: "
                f"give k= at most {channels}"
            )
        self._check_head()

    def _check_head(self) -> None:
        """The votes give the model after the layer a concept instead of an image's output:
        that needs the rest of the model to read nothing else from the image. Checked before
        any image, on two probe images: the first's layer output, handed to the model run on
        the second, must give the first's scores."""
        import torch

        from .errors import LayerError
        from .modelstate import frozen_eval

        h, w = self.loaded.preprocess.input_size
        probes = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
        probes = probes.to(self.explainer.device)
        with frozen_eval(self.explainer.model), torch.no_grad():
            head = self._forward(probes[:1]).head
            index = torch.zeros(1, dtype=torch.long, device=probes.device)
            scores = head._run(probes[1:], head.outputs, index)
        scale = 1.0 + float(head.scores.abs().max())
        if not torch.allclose(scores.float(), head.scores.float(), 1e-4, 1e-4 * scale):
            raise LayerError(
                f"layer '{self.ref}': the model's scores depend on more than its output (a "
                "skip connection from before it, as around a transformer block's norm1), so a "
                "concept alone cannot be handed to the rest of the model for its votes; give "
                "--layer the output of a whole block (in a ViT, a block before the last: "
                "`gradcam layers MODEL` lists them)"
            )

    def _channels(self) -> int | None:
        shape = self.explainer.probe.get(self.ref.name).map_shape
        return None if shape is None else shape[0]

    def run(self, images, progress: Progress | None = None) -> ConceptResult:
        import torch

        from .batchsize import choose_batch_size
        from .explainer import _is_one_image
        from .modelstate import frozen_eval
        from .nmf import nmf, relative_error

        images = [images] if _is_one_image(images) else list(images)
        if not images:
            raise UsageError("images= is empty: give at least one image")
        explainer = self.explainer
        batch_size = choose_batch_size(
            self.batch_size, explainer.probe.activation_bytes, len(images), explainer.device
        )
        self.read, self.skipped = [], []
        with frozen_eval(explainer.model), torch.no_grad():
            sample = _Sample(len(images), self.max_fit_bytes, self.seed)
            head = None
            for batch in self._batches(images, batch_size, progress, first=True):
                sample.add(batch.activations)
                if head is None:  # the votes run the head as the first batch's
                    head = batch.head
            if head is None:
                reasons = "; ".join(f"{s}: {why}" for s, why in self.skipped[:3])
                raise UsageError(f"no image could be read ({reasons})")
            x = sample.matrix()
            factors = nmf(x, self.k, seed=self.seed)
            error = relative_error(x, factors.w, factors.h)
            if sample.subsampled:  # each image's maps from its own activations, W fixed
                maps = self._solve_maps(images, batch_size, progress, factors.w, sample.offset)
            else:
                maps = sample.maps(factors.h)
            # Each concept at its strongest position in the run, in the layer's own values:
            # free of the factors' scale (W D, D⁻¹ H factor A as well), which the votes are not.
            peaks = np.max([m.reshape(self.k, -1).max(axis=1) for m in maps], axis=0)
            scale = torch.as_tensor(peaks, dtype=factors.w.dtype, device=factors.w.device)
            vectors = factors.w * scale + sample.offset[:, None]  # [C, k]
            votes = self._votes(head, vectors)
        norms = torch.linalg.norm(factors.w, dim=0).cpu().numpy()  # [k]
        strengths = np.stack([m.reshape(self.k, -1).mean(axis=1) for m in maps]) * norms
        order = np.argsort(-strengths.sum(axis=0), kind="stable")  # strongest concept first
        found = sorted(zip(self.read, maps, strengths, strict=True), key=lambda f: f[0][0])
        records = tuple(
            ImageConcepts(source, m[order], s[order], box, image)
            for (_, source, box, image), m, s in found  # in the inputs' order
        )
        vectors_np = vectors.float().cpu().numpy()
        concepts = tuple(
            Concept(number, votes[j], vectors_np[:, j], _strongest(records, number - 1))
            for number, j in enumerate(order.tolist(), start=1)
        )
        return ConceptResult(
            model=self.loaded.describe(),
            layer=str(self.ref),
            k=self.k,
            seed=self.seed,
            concepts=concepts,
            images=records,
            reconstruction_error=error,
            iterations=factors.iterations,
            converged=factors.converged,
            channels=int(x.shape[0]),
            fitted_positions=int(x.shape[1]),
            subsampled=sample.subsampled,
            offset=sample.offset.float().cpu().numpy(),
            preprocess=self.loaded.preprocess.describe(),
            device=str(explainer.device),
            seconds=time.perf_counter() - self.started,
            skipped=tuple(self.skipped),
        )

    # -- passes over the images --

    def _batches(
        self, images: list, batch_size: int, progress: Progress | None, *, first: bool
    ) -> Iterator[_Batch]:
        """Each batch's activations [B, C, h, w] (float32, NaN as 0) with its head; the first
        pass records the images read (`self.read`) and skipped (`self.skipped`)."""
        import torch

        from .errors import ImageReadError
        from .explainer import _as_photo, _source_of

        preprocess = self.explainer.loaded.preprocess
        done = 0
        if progress is not None:
            progress(0, len(images))
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            entries = []  # (what `read` records, the model's input)
            for offset, image in enumerate(chunk):
                source = _source_of(image) or f"image {start + offset}"
                try:
                    photo = _as_photo(image)
                except ImageReadError as exc:  # listed; the rest are factored
                    if first:
                        self.skipped.append((source, _reason(exc, source)))
                    continue
                record = (start + offset, source, preprocess.crop_box(*photo.size), image)
                entries.append((record, preprocess.to_array(photo)))
            for group in _by_shape(entries):  # `read` in the order the activations come
                if first:
                    self.read += [record for record, _ in group]
                x = torch.from_numpy(np.stack([array for _, array in group]))
                yield self._forward(x.to(self.explainer.device))
            done += len(chunk)
            if progress is not None:
                progress(done, len(images))

    def _forward(self, x: torch.Tensor) -> _Batch:
        from .engine import _Capture, _HeadRunner
        from .modelstate import removing
        from .tasks import TargetRequest

        explainer = self.explainer
        scoring = explainer.task.scoring(TargetRequest(), explainer.probe.outputs_probabilities)
        capture = _Capture(self.ref, x, scoring.frame_size)
        handles: list = []
        with removing(handles), scoring.watch(explainer.model):
            handles.append(self.ref.module.register_forward_hook(capture))
            output = explainer.model(x)
            capture.check_calls()
        scores = scoring.bind(output)
        head = _HeadRunner(explainer.model, capture, x, scores, scoring, "gradcam concepts")
        activations = capture.activations().float().nan_to_num(0.0, 0.0, 0.0)
        return _Batch(activations, head)

    def _solve_maps(self, images, batch_size, progress, w, offset) -> list[np.ndarray]:
        from .nmf import solve_h

        maps: list[np.ndarray] = []
        for batch in self._batches(images, batch_size, progress, first=False):
            b, c, h, wide = batch.activations.shape
            x = (batch.activations - offset[None, :, None, None]).clamp(min=0)
            for one in x:
                solved = solve_h(one.reshape(c, h * wide), w)
                maps.append(solved.reshape(self.k, h, wide).cpu().numpy())
        if len(maps) != len(self.read):  # a file changed between the passes
            raise UsageError("the inputs changed while they were read twice; run again")
        return maps

    def _votes(self, head, vectors: torch.Tensor) -> list[tuple[Vote, ...]]:
        """Each concept's top classes: the head on the layer's output holding the concept's
        vector at every position (a token layer's prefix tokens too: a class token read by the
        head is the concept, not an image's)."""
        import torch

        from .engine import HeadOnlyFallbackWarning

        _, _, h, w = head.layout.to_map(head.outputs).shape
        maps = vectors.T[:, :, None, None].expand(-1, -1, h, w).contiguous()  # [k, C, h, w]
        prefix = vectors.T[:, None, :].expand(-1, head.layout.prefix, -1)  # [k, P, C]
        rows = head.layout.from_map(maps, prefix)
        index = torch.zeros(self.k, dtype=torch.long, device=maps.device)
        with warnings.catch_warnings():  # a full pass instead of the head alone (a ViT refuses
            # an empty batch) is exact here, as _check_head made sure: no warning
            warnings.simplefilter("ignore", HeadOnlyFallbackWarning)
            scores = head.run_rows(rows, index)
        probabilities = _probabilities(
            scores.float(),
            self.explainer.probe.outputs_probabilities,
            self.explainer.probe.num_outputs == 1,
        ).cpu()
        top = min(self.top_classes, probabilities.shape[1])
        values, indices = probabilities.topk(top, dim=1)
        return [
            tuple(
                Vote(int(i), self.explainer.label(int(i)), round(float(p), 6))
                for p, i in zip(row_values, row_indices, strict=True)
            )
            for row_values, row_indices in zip(values, indices, strict=True)
        ]


@dataclass(frozen=True)
class _Batch:
    activations: torch.Tensor  # [B, C, h, w]
    head: Any  # engine._HeadRunner for this batch


class _Sample:
    """The positions the factorization is fitted on: all of each image's when the run's
    activations fit in `max_bytes`, else the same number from each image, drawn with `seed`;
    and each channel's minimum over every position (the offset)."""

    def __init__(self, images: int, max_bytes: int, seed: int):
        import torch

        self.images, self.max_bytes = images, max_bytes
        self.generator = torch.Generator().manual_seed(seed)
        self.kept: list[torch.Tensor] = []  # per image [C, positions kept]
        self.shapes: list[tuple[int, int]] = []
        self.subsampled = False
        self.minimum: torch.Tensor | None = None

    def add(self, activations: torch.Tensor) -> None:
        import torch

        b, c, h, w = activations.shape
        flat = activations.reshape(b, c, h * w)
        low = flat.amin(dim=(0, 2))
        self.minimum = low if self.minimum is None else torch.minimum(self.minimum, low)
        quota = max(1, self.max_bytes // (4 * c * self.images))
        for one in flat:
            if quota < h * w:
                self.subsampled = True
                chosen = torch.randperm(h * w, generator=self.generator)[:quota]
                one = one[:, chosen.to(one.device)]
            self.kept.append(one)
            self.shapes.append((h, w))

    @property
    def offset(self) -> torch.Tensor:
        assert self.minimum is not None
        return self.minimum

    def matrix(self) -> torch.Tensor:
        """[C, positions] ≥ 0: the kept positions of every image, less the offset."""
        import torch

        return (torch.cat(self.kept, dim=1) - self.offset[:, None]).clamp(min=0)

    def maps(self, h_matrix: torch.Tensor) -> list[np.ndarray]:
        """H [k, positions] cut into each image's maps [k, h, w] (all positions kept)."""
        k = h_matrix.shape[0]
        sizes = [h * w for h, w in self.shapes]
        parts = h_matrix.split(sizes, dim=1)
        return [
            part.reshape(k, h, w).cpu().numpy()
            for part, (h, w) in zip(parts, self.shapes, strict=True)
        ]


def _by_shape(entries: list[tuple[Any, np.ndarray]]) -> list[list[tuple[Any, np.ndarray]]]:
    """(record, array) pairs grouped by the array's shape (resize='keep' gives each photo its
    own), in order of first appearance."""
    groups: dict[tuple, list[tuple[Any, np.ndarray]]] = {}
    for entry in entries:
        groups.setdefault(tuple(entry[1].shape), []).append(entry)
    return list(groups.values())


def _probabilities(
    scores: torch.Tensor, outputs_probabilities: bool, single_logit: bool
) -> torch.Tensor:
    """As the report's: softmax; sigmoid of [-z, z] for a single logit; probabilities as is."""
    import torch

    if outputs_probabilities:
        return scores
    return torch.sigmoid(scores) if single_logit else scores.softmax(dim=1)


def _strongest(records: Sequence[ImageConcepts], j: int) -> tuple[int, ...]:
    shares = np.array([record.shares[j] for record in records])
    order = np.argsort(-shares, kind="stable")
    return tuple(int(i) for i in order[:SHEET_IMAGES] if shares[i] > 0)


def _reason(exc: Exception, source: str) -> str:
    return str(exc).removeprefix(f"cannot read {source}: ")


def _explainer(loaded: LoadedModel, layer, device) -> Explainer:
    from .explainer import Explainer

    if isinstance(layer, str) and "," in layer or isinstance(layer, list | tuple):
        raise UsageError(f"layer={layer!r}: concepts are factored at one layer; give one")
    if loaded.task != "classification":
        raise UsageError(
            f"concepts vote for classes through a classifier's head; {loaded.title} is a "
            f"{loaded.task} model: not supported"
        )
    return Explainer(loaded, layer, device=device)


# -- files and the command -------------------------------------------------------------------------


def write_outputs(
    result: ConceptResult, out: str | os.PathLike = "gradcam_concepts", *, save_raw: bool = False
) -> dict[str, Path]:
    """Write into `out`, atomically and holding its lock: each image's concept overlay, each
    concept's figure and concepts.json (concept_outputs.py); returns their paths by kind."""
    from .concept_outputs import write_files
    from .outlock import output_lock

    with output_lock(Path(out)):
        return write_files(result, Path(out), save_raw=save_raw)


def run_concepts(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    model: str | LoadedModel | nn.Module,
    *,
    out: str | os.PathLike = "gradcam_concepts",
    save_raw: bool = False,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    labels_file: str | os.PathLike | None = None,
    input_size: int | None = None,
    resize: str | None = None,
    stdin=None,
    on_note: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    **options,
) -> tuple[ConceptResult, dict[str, Path]]:
    """What `gradcam concepts` does, as one call: find the images as `gradcam explain` finds
    them, load the model when it is named by a string (with the keywords of `load_model`),
    factor with `options` as `find_concepts` takes them, and write the files as `write_outputs`
    does, holding `out`'s lock for the whole run. Every check that can fail is made before the
    model is loaded or before any image, and nothing is written then."""
    from .concept_outputs import write_files
    from .folderrun import ModelOptions, find_run_inputs
    from .outlock import output_lock

    building = ModelOptions(pretrained, weights, num_classes, labels_file, input_size, resize)
    building.refuse_for_built(model)
    check_k(options.get("k", DEFAULT_K))
    check_top_classes(options.get("top_classes", DEFAULT_TOP_CLASSES))
    check_seed(options.get("seed", 0))
    run_inputs = find_run_inputs(inputs, out, stdin, on_note)
    out, found, missing = run_inputs.out, run_inputs.found, run_inputs.missing
    model = building.load(model)
    run = _Run(model, **options)
    if on_note is not None and run.explainer.layer_chosen_automatically:
        on_note(f"no layer= given: using '{run.ref}' (the last spatial layer the logits depend on)")
    with output_lock(out):
        result = run.run(found, progress)
        result = replace(result, skipped=missing + result.skipped)
        return result, write_files(result, out, save_raw=save_raw)
