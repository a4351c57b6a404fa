"""`gradcam compare BASE NEW`: did the model change its mind? Explanation drift between two runs.

    from gradcam_cli.compare import compare_runs, save_comparison

    comparison = compare_runs("runs/v1", "runs/v2", min_corr=0.8, max_top1_changes=2)
    comparison.passed, comparison.pairs[0].pearson      # the worst pair first
    save_comparison(comparison, "runs/v2", page=True)    # comparison.json, comparison.html

Two runs of `gradcam explain --save-raw` over the same inputs (a golden set before and after a
retraining, a quantisation, a torch upgrade, another preprocessing; or two methods on one model)
are paired explanation by explanation and their raw maps compared. Only the reports and the
`.npy` maps are read: no model, no torch.

Pairing, by input, layer and target:
- inputs by the `input` string each report recorded (the path as given, or as found under a
  folder): runs made from the same folder pair up whatever order they found the files in, and
  the inputs only one run has are listed (`only_in_base`, `only_in_new`), never dropped;
- layers by name; with allow_method_change, two runs of one layer each pair their layers
  whatever their names;
- targets by class index. In predicted-class runs (neither named targets=), an image whose
  predicted class changed has top-1 explanations for two different classes: they are paired
  with each other (`match: "top1"`, both classes named), since the question is what the model
  looks at when it decides;
- explanations left without a partner are listed in `unpaired`.

Measures of a pair (`mapstats.measure_maps`):
- both maps on one grid over the photo: each map covers the crop box its run's preprocessing
  cut from the photo (`Preprocess.crop_box`), so runs with different input sizes or resize
  modes are compared where they saw the same pixels. The grid spans both boxes, as fine as the
  finer map; a map is resampled bilinearly (align_corners=False, torch's `interpolate`) and is 0
  where its box does not reach. Maps of one geometry are compared as they are;
- Pearson's correlation (the `min_corr` gate: it is blind to each map's offset and scale, so it
  is the correlation of the maps as drawn, min-max normalised) and Spearman's (ranks, ties
  averaged); a map without variation (blank after the ReLU) has neither: null, which fails
  the gate. Identical maps correlate 1.0 whatever they hold;
- the peak's shift: each map's maximum (its cell's centre) placed on the photo through its own
  crop box, the distance in photo pixels;
- the energy that moved: 1 − the histogram intersection of the two maps, each scaled to sum 1
  (0: the same distribution, 1: disjoint);
- the image's top-1 class in each run, the change of the base target's probability, and the
  change of the localization figures when both runs measured them against masks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .comparison import COMPARISON_NAME, CompareGates, Comparison, Pair, Side
from .errors import UsageError
from .files import resolve_inside, write_text_atomic
from .mapstats import Box, measure_maps, rounded
from .outlock import check_unlocked
from .preprocess import Preprocess
from .report import REPORT_NAME, SCHEMA_VERSION, has_shard_reports, read_report_file

if TYPE_CHECKING:
    from .explainer import Explainer

__all__ = [
    "compare_runs",
    "save_comparison",
    "read_baseline",
    "check_baseline",
    "baseline_gates",
]


# -- the runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    folder: Path
    document: dict
    role: str  # "base" or "new"; "baseline" for explain's baseline=

    @property
    def name(self) -> str:
        return f"the {self.role} run {self.folder}"

    @property
    def names_targets(self) -> bool:
        """The run explained classes named with targets=, not each image's predicted ones."""
        return bool((self.document.get("options") or {}).get("classes"))

    def top1(self, result: Mapping) -> Mapping:
        """The image's predicted class in this run: in a predicted-class run the class of its
        first explanation, the one the run explained as its prediction (`predictions` may
        order an exact tie the other way), else the first of `predictions`."""
        explanations = result.get("explanations") or []
        if not self.names_targets and explanations:
            chosen = explanations[0].get("target") or {}
        else:
            chosen = (result.get("predictions") or [{}])[0]
        return {"index": chosen.get("index"), "label": chosen.get("label")}

    def preprocess(self) -> Preprocess | None:
        recorded = self.document.get("preprocess") or {}
        try:
            return Preprocess(
                input_size=tuple(recorded["input_size"]),
                resize_shorter=int(recorded["resize_shorter"]),
                resize_mode=recorded.get("resize_mode", "shorter"),
                interpolation=recorded.get("interpolation", "bilinear"),
            )
        except (KeyError, TypeError, ValueError):  # a report without it: the geometry is unknown
            return None

    def describe(self) -> dict[str, object]:
        keys = ("model", "method", "method_options", "layers", "preprocess")
        return {"run": str(self.folder), **{key: self.document.get(key) for key in keys}}


def _read_run(folder: str | Path, role: str) -> _Run:
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(
            f"the {role} run {folder} is not a folder: give the --out folder of a gradcam "
            "explain run"
        )
    path = folder / REPORT_NAME
    if not path.is_file():
        if has_shard_reports(folder):
            hint = f"its shares are there: run `gradcam merge {folder}` first"
        else:
            hint = f"run `gradcam explain ... --save-raw --out {folder}` first"
        raise UsageError(f"no {REPORT_NAME} in the {role} run {folder}: {hint}")
    check_unlocked(folder)  # a run still writing its report is not compared
    return _Run(folder, read_report_file(path), role)


def _check_comparable(base: _Run, new: Mapping, new_name: str, allow: bool, advice: str) -> None:
    """Refuse runs this comparison cannot pair, or should not: another report schema, and
    unless `allow`, another method, method options or layers."""
    schemas = base.document.get("schema_version"), new.get("schema_version")
    if schemas[0] != schemas[1] or schemas[0] != SCHEMA_VERSION:
        raise UsageError(
            f"{base.name} and {new_name} have reports of schema_version {schemas[0]} and "
            f"{schemas[1]}, and this gradcam reads {SCHEMA_VERSION}: rerun the other one with "
            "this gradcam"
        )
    if allow:
        return
    differs = []
    method = base.document.get("method"), new.get("method")
    if method[0] != method[1]:
        differs.append(f"methods ({method[0]} and {method[1]})")
    smoothing = _smoothing(base.document), _smoothing(new)
    if smoothing[0] != smoothing[1]:
        differs.append(f"method options ({smoothing[0]} and {smoothing[1]})")
    layers = base.document.get("layers"), new.get("layers")
    if layers[0] != layers[1]:
        differs.append(f"layers ({_listed(layers[0])} and {_listed(layers[1])})")
    if differs:
        raise UsageError(
            f"{base.name} and {new_name} used different {'; '.join(differs)}: {advice}"
        )


def _smoothing(document: Mapping) -> str:
    options = document.get("method_options") or {}
    on = [name for name in ("aug_smooth", "eigen_smooth") if options.get(name)]
    return ", ".join(on) or "no smoothing"


def _listed(names: object) -> str:
    return ", ".join(map(str, names)) if isinstance(names, list) else str(names)


def _check_raw_maps(run: _Run) -> None:
    if not (run.document.get("options") or {}).get("save_raw"):
        raise UsageError(
            f"{run.name} has no raw maps (the comparison reads the .npy maps, not the pictures): "
            "rerun it with save_raw=True"
        )


def baseline_gates(baseline: str | Path | None, **values: Any) -> CompareGates:
    """The gates of `gradcam explain`'s baseline=, checked before the run; refused without a
    baseline (they would gate nothing)."""
    gates = CompareGates(**values)
    if gates.active and baseline is None:
        given = " and ".join(
            f"{name}=" for name, value in asdict(gates).items() if value is not None
        )
        raise UsageError(f"{given} gate a comparison with a baseline run: add baseline=RUN")
    return gates


def read_baseline(baseline: str | Path, *, out: str | Path, shard: object = None) -> _Run:
    """Before a run that will be compared with `baseline` (`gradcam explain --baseline RUN`),
    before its model loads: the baseline's report, refused now if `compare_runs` would refuse it
    after the run for its own sake (unreadable, no raw maps, the run's own out=, a share)."""
    if shard is not None:
        raise UsageError(
            "baseline= compares a whole run, and shard= makes a share of one: run the shares, "
            f"`gradcam merge {out}`, then `gradcam compare {baseline} {out}`"
        )
    base = _read_run(baseline, "baseline")
    if base.folder.resolve() == Path(out).resolve():
        raise UsageError(
            f"baseline= {baseline} is out= itself: the run would overwrite the run it is "
            "compared with; give another out="
        )
    _check_raw_maps(base)
    return base


def check_baseline(base: _Run, explainer: Explainer) -> None:
    """Refuse a baseline (`read_baseline`) made with another method, method options or layers
    than `explainer` will use, before it runs."""
    planned = {
        "schema_version": SCHEMA_VERSION,
        "method": explainer.method.name,
        "method_options": {
            "aug_smooth": explainer.aug_smooth,
            "eigen_smooth": explainer.eigen_smooth,
        },
        "layers": [str(layer) for layer in explainer.layers],
    }
    advice = (
        "explain with the baseline's method and layers, or compare two methods with "
        "`gradcam compare BASE NEW --allow-method-change`"
    )
    _check_comparable(base, planned, "this run", False, advice)


# -- pairing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    input: str
    how: str
    results: tuple[Mapping, Mapping]  # the image's result in each run
    explanations: tuple[Mapping, Mapping]


def _by_input(run: _Run) -> dict[str, Mapping]:
    """The run's results by input (an input given twice: its first result)."""
    found: dict[str, Mapping] = {}
    for result in run.document["results"]:
        if isinstance(result, Mapping):
            found.setdefault(str(result.get("input")), result)
    return found


def _index(explanation: Mapping) -> object:
    return (explanation.get("target") or {}).get("index")


def _match_image(
    name: str, results: tuple[Mapping, Mapping], layer_key, tops: tuple | None
) -> tuple[list[_Match], list[tuple[str, Mapping]]]:
    """One image's explanations in both runs: the pairs, and those left ("base"/"new", e).
    `tops`: each run's top-1 class index in predicted-class runs, else None."""
    left_new = list(results[1].get("explanations") or [])

    def partner(base: Mapping, index: object) -> Mapping | None:
        for new in left_new:
            if layer_key(new) == layer_key(base) and _index(new) == index:
                left_new.remove(new)
                return new
        return None

    matches, left_base = [], []
    for base in results[0].get("explanations") or []:
        found = partner(base, _index(base))
        if found is None:
            left_base.append(base)
        else:
            matches.append(_Match(name, "class", results, (base, found)))
    unmatched = []
    for base in left_base:  # a changed prediction: each run's top-1 explanation, paired
        found = partner(base, tops[1]) if tops and _index(base) == tops[0] else None
        if found is None:
            unmatched.append(base)
        else:
            matches.append(_Match(name, "top1", results, (base, found)))
    return matches, [("base", e) for e in unmatched] + [("new", e) for e in left_new]


def _unpaired_record(name: str, run: str, explanation: Mapping) -> dict[str, object]:
    target = explanation.get("target") or {}
    return {
        "input": name,
        "run": run,
        "layer": explanation.get("layer"),
        "target": {"index": target.get("index"), "label": target.get("label")},
    }


def _layer_key(base: _Run, new: _Run, allow: bool):
    """How explanations are matched by layer: by name, or (two one-layer runs of different
    layers, allowed) all together."""
    layers = base.document.get("layers") or [], new.document.get("layers") or []
    if allow and len(layers[0]) == 1 and len(layers[1]) == 1 and layers[0] != layers[1]:
        return lambda explanation: ""
    return lambda explanation: explanation.get("layer")


# -- the comparison ---------------------------------------------------------------------------


def compare_runs(
    base: str | Path,
    new: str | Path,
    *,
    min_corr: float | None = None,
    max_shift: float | None = None,
    max_energy_moved: float | None = None,
    max_top1_changes: int | None = None,
    allow_method_change: bool = False,
) -> Comparison:
    """Compare the run in folder `new` with the run in folder `base` (each the out= of a
    `gradcam explain` made with save_raw=True); the gates as in `CompareGates`.

    UsageError when they cannot be compared: a missing or unreadable report, another report
    schema, no raw maps, no input or no explanation in common, and — unless
    allow_method_change=True, to measure how two methods agree on one model — another method,
    method options or layers. Nothing is written (`Comparison.save`)."""
    started = time.perf_counter()
    gates = CompareGates(min_corr, max_shift, max_energy_moved, max_top1_changes)
    base_run, new_run = _read_run(base, "base"), _read_run(new, "new")
    advice = (
        "compare runs of one method and layers, or pass allow_method_change=True to measure "
        "how they agree"
    )
    _check_comparable(base_run, new_run.document, new_run.name, allow_method_change, advice)
    for run in (base_run, new_run):
        _check_raw_maps(run)
    pairing = _pair_up(base_run, new_run, allow_method_change)
    _check_maps_exist(pairing.matches, base_run, new_run)
    pairs = [_pair(match, base_run, new_run) for match in pairing.matches]
    top1_changes = sum(
        base_run.top1(results[0])["index"] != new_run.top1(results[1])["index"]
        for results in pairing.explained
    )
    if gates.active:
        pairs = [_gated(pair, gates, top1_changes) for pair in pairs]
    return Comparison(
        base_dir=base_run.folder,
        new_dir=new_run.folder,
        base=base_run.describe(),
        new=new_run.describe(),
        gates=gates,
        allow_method_change=allow_method_change,
        pairs=tuple(sorted(pairs, key=_worst_first)),
        inputs_compared=len(pairing.explained),
        only_in_base=pairing.only_in_base,
        only_in_new=pairing.only_in_new,
        failed=tuple(pairing.failed),
        unpaired=tuple(pairing.unpaired),
        top1_changes=top1_changes,
        seconds=time.perf_counter() - started,
    )


def save_comparison(comparison: Comparison, out: str | Path, page: bool = False) -> dict[str, Path]:
    """Write OUT/comparison.json, and with `page` OUT/comparison.html and its pictures
    (OUT/comparison/); the paths written, by kind. The JSON goes last: a reader that finds it
    finds the page too. The caller holds OUT's lock if needed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"comparison": out / COMPARISON_NAME}
    if page:
        from .pages.comparison import write_comparison_page

        written["page"] = write_comparison_page(comparison, out)
    page_name = written["page"].name if page else None
    write_text_atomic(written["comparison"], comparison.to_json(page_name))
    return written


@dataclass
class _Pairing:
    """The two runs' explanations matched (`_pair_up`)."""

    matches: list[_Match] = field(default_factory=list)
    explained: list[tuple[Mapping, Mapping]] = field(default_factory=list)  # inputs ok in both
    failed: list[dict] = field(default_factory=list)  # {input, base, new}: the errors
    unpaired: list[dict] = field(default_factory=list)
    only_in_base: tuple[str, ...] = ()
    only_in_new: tuple[str, ...] = ()


def _pair_up(base: _Run, new: _Run, allow_method_change: bool) -> _Pairing:
    """Match the explanations of the inputs both runs have, input by input; UsageError when
    they have no input, or no explanation, in common."""
    base_results, new_results = _by_input(base), _by_input(new)
    common = [name for name in base_results if name in new_results]
    if not common:
        raise UsageError(
            f"{base.name} and {new.name} have no input in common ({len(base_results)} and "
            f"{len(new_results)} inputs): inputs are matched by the path each run was given, "
            "so run both from the same folder on the same paths"
        )
    pairing = _Pairing(
        only_in_base=tuple(name for name in base_results if name not in new_results),
        only_in_new=tuple(name for name in new_results if name not in base_results),
    )
    layer_key = _layer_key(base, new, allow_method_change)
    predicted = not base.names_targets and not new.names_targets
    for name in common:
        results = base_results[name], new_results[name]
        errors = [r.get("error") if r.get("status") != "ok" else None for r in results]
        if any(result.get("status") != "ok" for result in results):
            pairing.failed.append({"input": name, "base": errors[0], "new": errors[1]})
            continue
        pairing.explained.append(results)
        tops = (
            (base.top1(results[0])["index"], new.top1(results[1])["index"]) if predicted else None
        )
        found, left = _match_image(name, results, layer_key, tops)
        pairing.matches += found
        pairing.unpaired += [_unpaired_record(name, run, e) for run, e in left]
    if not pairing.matches:
        raise UsageError(
            f"no explanation of {base.name} has a partner in {new.name} (the same input, layer "
            "and target class): explain the same targets in both runs"
        )
    return pairing


def _check_maps_exist(matches: Sequence[_Match], base: _Run, new: _Run) -> None:
    for side, run in enumerate((base, new)):
        missing = [
            str(m.explanations[side].get("raw"))
            for m in matches
            if not _raw_file(run, m.explanations[side]).is_file()
        ]
        if missing:
            raise UsageError(
                f"{len(missing)} raw map(s) of {run.name} are missing (the first: "
                f"{missing[0]}): rerun it with save_raw=True"
            )


def _raw_file(run: _Run, explanation: Mapping) -> Path:
    raw = explanation.get("raw")
    if not isinstance(raw, str) or not raw:
        return run.folder / ".no raw map recorded"  # is_file() says no: refused with the others
    return resolve_inside(run.folder, raw)


def _load_map(run: _Run, explanation: Mapping) -> np.ndarray:
    path = _raw_file(run, explanation)
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the raw map {path} of {run.name} ({exc})") from None
    if values.ndim != 2 or values.size == 0:
        raise UsageError(
            f"{path} of {run.name} is not a raw map (shape {values.shape}, not [h, w])"
        )
    return values


def _pair(match: _Match, base: _Run, new: _Run) -> Pair:
    runs = (base, new)
    maps = [_load_map(run, e) for run, e in zip(runs, match.explanations, strict=True)]
    sizes = [_size(result) for result in match.results]
    boxes = [_box(run, size) for run, size in zip(runs, sizes, strict=True)]
    measured = measure_maps(maps[0], maps[1], boxes[0], boxes[1])
    sides = [
        Side(
            target=e.get("target") or {},
            layer=str(e.get("layer")),
            raw=str(e.get("raw")),
            overlay=e.get("overlay"),
            top1=run.top1(result),
            peak=peak,
            box=box,
            size=size,
        )
        for run, e, result, peak, box, size in zip(
            runs, match.explanations, match.results, measured.peaks, boxes, sizes, strict=True
        )
    ]
    return Pair(
        input=match.input,
        match=match.how,
        base=sides[0],
        new=sides[1],
        grid=measured.grid,
        pearson=measured.pearson,
        spearman=measured.spearman,
        peak_shift=measured.peak_shift,
        energy_moved=measured.energy_moved,
        probability_change=_probability_change(match),
        localization=_localization_change(*match.explanations),
    )


def _size(result: Mapping) -> tuple[int, int] | None:
    size = result.get("size")
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return size[0], size[1]
    return None


def _box(run: _Run, size: tuple[int, int] | None) -> Box | None:
    preprocess = run.preprocess()
    if preprocess is None or size is None:
        return None
    return preprocess.crop_box(*size)


def _probability_change(match: _Match) -> float | None:
    """The base target's probability in the new run minus the base run's: its target's, or for
    a top-1 pair, the base class among the new run's predictions (None when not among them)."""
    base_target = match.explanations[0].get("target") or {}
    before = base_target.get("probability")
    if match.how == "class":
        after = (match.explanations[1].get("target") or {}).get("probability")
    else:
        predictions = match.results[1].get("predictions") or []
        found = [p for p in predictions if p.get("index") == base_target.get("index")]
        after = found[0].get("probability") if found else None
    if not isinstance(before, int | float) or not isinstance(after, int | float):
        return None
    return float(after) - float(before)


def _localization_change(base: Mapping, new: Mapping) -> dict[str, Any] | None:
    """With masks in both runs: hit in each, and the change of energy and IoU (new − base)."""
    before, after = base.get("localization"), new.get("localization")
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return None
    if before.get("energy") is None or after.get("energy") is None:
        return None  # a mask was missing or unreadable in one run
    return {
        "hit": {"base": before.get("hit"), "new": after.get("hit")},
        "energy_change": rounded(after["energy"] - before["energy"]),
        "iou_change": rounded((after.get("iou") or 0.0) - (before.get("iou") or 0.0)),
    }


def _gated(pair: Pair, gates: CompareGates, top1_changes: int) -> Pair:
    shortfalls = gates.shortfalls(pair, top1_changes)
    return replace(pair, gate={"passed": not shortfalls, "shortfalls": shortfalls})


def _worst_first(pair: Pair) -> tuple:
    """Failed pairs first, then by correlation (none, a blank map, first), then by the energy
    that moved, most first."""
    correlation = -2.0 if pair.pearson is None else pair.pearson
    moved = -1.0 if pair.energy_moved is None else pair.energy_moved
    return (not pair.failed, correlation, -moved, pair.input, pair.layer)
