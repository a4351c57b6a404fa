"""Faithfulness of every method on `demo:shapes`'s held-out scenes, against three baselines.

    .venv/bin/python benchmarks/faithfulness.py [--scenes 300] [--methods gradcam,cam,...]
                                                [--batch-size 32] [--threads 1]
                                                [--checkpoint PATH] [--out PATH_STEM]

Scenes: the held-out scenes of `benchmarks/demo_eval.py` (seeds the model never trained on),
two thirds single-object and one third two-object, as `make demo-eval` takes them: 300 is its
200 + 100. Targets: every object's true class, so a single-object scene gives one map and a
two-object scene two, one per object (400 maps for 300 scenes). The true classes, not the
predicted one, because that is what the held-out evaluation explains, and a two-object scene then
asks of each map whether it holds the evidence for its own object.

Maps, each at the model's input resolution (128²):

- every method in `gradcam_cli.methods.METHODS`, at the model's default layer (`features`, 8×8):
  the raw map upsampled bilinearly with align_corners=False (`to_input_resolution`), as the
  pictures place it (guided-backprop's map is already at input resolution);
- random: uniform noise at the CAM's resolution (8×8, seeded with the scene's seed), upsampled
  like a CAM; center: a centred Gaussian (σ = a quarter of the side); edges: the Sobel magnitude
  of the normalised input (`gradcam_cli.faithfulness`).

Metrics: all six of `gradcam_cli.faithfulness.measure` with its default settings (softmax
probability of the target; deletion/insertion in 20 steps onto zeros of the normalised input,
i.e. the mean colour; ROAD at percentiles 10…90, noise 0.01, seed 0). Each figure is the mean
over the maps with a 95% interval from a bootstrap over scenes (2000 resamples; the two maps of
a two-object scene are resampled together). Grad-CAM's paired difference to each baseline, over
the same maps, says whether it beats them. A last table says what the model calls the perturbed
images (`perturbed_top_classes`): on scenes of shapes, a hole or a window is a shape itself.

ROAD's imputation dominates the time (about 2 s a map on one core here): the full run takes
hours on this project's 2-core machine. --checkpoint keeps each map's values as they come and
skips what is already in it, so an interrupted run resumes. To use more cores, run parts of
--methods in parallel, each with its own checkpoint, then once more with all of them in one file
(`cat`): nothing is measured twice, and that run writes the report. Writes PATH_STEM.md and
PATH_STEM.json (default benchmarks/results/faithfulness_demo). Not a test; tests/
test_faithbench.py runs its functions on a few scenes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gradcam_cli.demo.scenes import CLASSES, make_scene, single_object_seeds, two_object_seeds
from gradcam_cli.explainer import Explainer
from gradcam_cli.faithfulness import (
    METRIC_NAMES,
    MetricSettings,
    center_map,
    check_metrics,
    edge_map,
    measure,
    random_map,
)
from gradcam_cli.methods import METHODS
from gradcam_cli.sources import LoadedModel, load_model

# The benchmarks describe their machine alike (compare.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import cpu_name  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "faithfulness_demo"
BASELINES = ("random", "center", "edges")
# Which way is better, for the verdicts and the table's header.
LOWER_IS_BETTER = {"deletion_auc", "average_drop", "road_morf"}
HEADERS = {
    "deletion_auc": "deletion AUC ↓",
    "insertion_auc": "insertion AUC ↑",
    "average_drop": "average drop ↓",
    "increase_in_confidence": "increase ↑",
    "road_morf": "ROAD MoRF ↓",
    "road_lerf": "ROAD LeRF ↑",
}
BOOTSTRAP_RESAMPLES = 2000
PEEK_DELETED = 0.2  # perturbed_top_classes: deletion's 4th of 20 steps


# -- scenes and maps ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HeldoutScene:
    seed: int
    labels: tuple[int, ...]  # the true class of each object: the targets explained
    image: torch.Tensor  # the model's normalised input [3, H, W]


def heldout_scenes(count: int, loaded: LoadedModel) -> list[HeldoutScene]:
    """The first `count` held-out scenes in `make demo-eval`'s proportions: two thirds
    single-object, one third two-object (300 → 200 + 100, 24 → 16 + 8)."""
    pairs = count // 3
    plan = [(seed, 1) for seed in single_object_seeds(count - pairs)]
    plan += [(seed, 2) for seed in two_object_seeds(pairs)]
    scenes = []
    for seed, objects in plan:
        scene = make_scene(seed, objects=objects)
        image = torch.from_numpy(loaded.preprocess.to_array(scene.image))
        scenes.append(HeldoutScene(seed, scene.labels, image))
    return scenes


def to_input_resolution(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A raw map [h, w] placed on the model's input [H, W]: bilinear, align_corners=False, as the
    pictures are drawn. The same function serves the random baseline made at the CAM's size."""
    return F.interpolate(raw.float()[None, None], size=size, mode="bilinear", align_corners=False)[
        0, 0
    ]


def method_maps(
    method: str, loaded: LoadedModel, scenes: Sequence[HeldoutScene], batch_size: int
) -> Iterator[tuple[HeldoutScene, int, torch.Tensor]]:
    """(scene, target, map at input resolution) for every object of every scene."""
    explainer = Explainer(loaded, method=method)
    every_class = list(range(explainer.num_classes))
    size = tuple(loaded.preprocess.input_size)
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        maps = explainer(torch.stack([s.image for s in chunk]), targets=every_class)
        for row, scene in enumerate(chunk):
            for target in scene.labels:
                yield scene, target, to_input_resolution(maps[row, target], size)


def cam_resolution(loaded: LoadedModel) -> tuple[int, int]:
    """The default layer's map size (the random baseline is drawn at it)."""
    explainer = Explainer(loaded)
    probe = torch.zeros(1, 3, *loaded.preprocess.input_size)
    return tuple(explainer(probe, targets=[0]).shape[-2:])


def baseline_maps(
    name: str, scenes: Sequence[HeldoutScene], cam_size: tuple[int, int]
) -> Iterator[tuple[HeldoutScene, int, torch.Tensor]]:
    for scene in scenes:
        size = tuple(scene.image.shape[1:])
        if name == "random":
            saliency = to_input_resolution(random_map(cam_size, seed=scene.seed), size)
        elif name == "center":
            saliency = center_map(size)
        else:
            saliency = edge_map(scene.image)
        for target in scene.labels:
            yield scene, target, saliency


def source_maps(
    source: str,
    loaded: LoadedModel,
    scenes: Sequence[HeldoutScene],
    batch_size: int,
    cam_size: tuple[int, int],
) -> Iterator[tuple[HeldoutScene, int, torch.Tensor]]:
    if source in BASELINES:
        return baseline_maps(source, scenes, cam_size)
    return method_maps(source, loaded, scenes, batch_size)


# -- the measurement ------------------------------------------------------------------------------


def measure_source(
    source: str,
    loaded: LoadedModel,
    scenes: Sequence[HeldoutScene],
    metrics: Iterable[str] = METRIC_NAMES,
    batch_size: int = 32,
    cam_size: tuple[int, int] | None = None,
    done: dict[tuple, dict] | None = None,
    on_row=None,
    same_maps: dict[tuple, dict] | None = None,
) -> list[dict]:
    """One row per map: source, seed, objects, target and the metrics' values.

    `done`: rows already measured, by (source, seed, target); they are reused, not re-measured.
    `on_row`: called with each newly measured row (the checkpoint's writer).
    `same_maps`: rows by (seed, target, the map's bytes digest), shared between sources: a map
    equal bit for bit to one measured before (guided-gradcam's and gradcam's here) has the same
    values, since `measure` is deterministic (ROAD's noise is seeded), so its row is copied
    ("same_map_as", no "seconds": it cost nothing) instead of measured again.
    """
    metrics = check_metrics(metrics)
    model = loaded.model.eval()
    cam_size = cam_size or cam_resolution(loaded)
    done = done or {}
    settings = MetricSettings()
    rows = []
    same_maps = {} if same_maps is None else same_maps
    for scene, target, saliency in source_maps(source, loaded, scenes, batch_size, cam_size):
        key = (source, scene.seed, target)
        same_key = (scene.seed, target, map_digest(saliency))
        if key in done and all(name in done[key] for name in metrics):
            rows.append(done[key])
            same_maps.setdefault(same_key, done[key])
            continue
        same = same_maps.get(same_key)
        if same is not None and all(name in same for name in metrics):
            row = {name: value for name, value in same.items() if name not in ("seconds", "load")}
            row.update(source=source, same_map_as=same.get("same_map_as", same["source"]))
            rows.append(row)
            if on_row is not None:
                on_row(row)
            continue
        began = time.perf_counter()
        found = measure(model, scene.image, saliency, target, metrics, settings, batch_size)
        row = {
            "source": source,
            "seed": scene.seed,
            "objects": len(scene.labels),
            "target": target,
            **found.values,
            "seconds": time.perf_counter() - began,
            "load": os.getloadavg()[0],  # the machine's, as this map was measured
        }
        rows.append(row)
        same_maps[same_key] = row
        if on_row is not None:
            on_row(row)
    return rows


def map_digest(saliency: torch.Tensor) -> str:
    """The map's exact bytes, hashed: equal digests, equal maps (dtype and shape included)."""
    array = saliency.detach().cpu().contiguous().numpy()
    head = f"{array.dtype}{array.shape}".encode()
    return hashlib.blake2b(head + array.tobytes(), digest_size=16).hexdigest()


def perturbed_top_classes(
    source: str,
    loaded: LoadedModel,
    scenes: Sequence[HeldoutScene],
    batch_size: int,
    cam_size: tuple[int, int],
) -> dict[str, dict[str, float]]:
    """What the model calls the perturbed images, on the single-object scenes: the share of maps
    by the top class of (`deleted`) the image with the map's top PEEK_DELETED of pixels set to
    the deletion substrate (zeros: the mean colour), and (`masked`) the image times the map
    scaled to [0, 1], average drop's input. A hole or a window has a shape of its own, and on
    scenes of shapes the model may read it: then deletion and drop measure that, not the map."""
    single = [scene for scene in scenes if len(scene.labels) == 1]
    images: dict[str, list[torch.Tensor]] = {"deleted": [], "masked": []}
    for scene, _, saliency in source_maps(source, loaded, single, batch_size, cam_size):
        scaled = saliency - saliency.min()
        scaled = scaled / (scaled.max() + 1e-8)  # as measure() scales it
        order = torch.argsort(scaled.flatten(), descending=True, stable=True)
        kept = torch.ones(scaled.numel(), dtype=torch.bool)
        kept[order[: round(PEEK_DELETED * scaled.numel())]] = False
        images["deleted"].append(torch.where(kept.view(scaled.shape), scene.image, 0.0))
        images["masked"].append(scene.image * scaled)
    return {name: _top_class_shares(loaded, batch, batch_size) for name, batch in images.items()}


def _top_class_shares(
    loaded: LoadedModel, images: list[torch.Tensor], batch_size: int
) -> dict[str, float]:
    model = loaded.model.eval()
    tops: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            tops += model(torch.stack(images[start : start + batch_size])).argmax(1).tolist()
    return {name: tops.count(index) / max(1, len(tops)) for index, name in enumerate(CLASSES)}


# -- statistics -----------------------------------------------------------------------------------


def bootstrap_interval(
    values_by_scene: Sequence[Sequence[float]], seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the mean over maps, resampling scenes (a scene's maps go
    together, as they share an image)."""
    sums = np.array([sum(values) for values in values_by_scene], dtype=np.float64)
    counts = np.array([len(values) for values in values_by_scene], dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sums), size=(BOOTSTRAP_RESAMPLES, len(sums)))
    means = sums[picks].sum(1) / counts[picks].sum(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _by_scene(rows: Iterable[dict], metric: str) -> list[list[float]]:
    grouped: dict[int, list[float]] = {}
    for row in rows:
        grouped.setdefault(row["seed"], []).append(row[metric])
    return list(grouped.values())


def summarize(rows: Sequence[dict], metrics: Iterable[str]) -> dict[str, dict]:
    """Per metric: mean, 95% bootstrap interval, the means on one- and two-object scenes, and
    the mean per target class."""
    summary = {}
    for metric in metrics:
        values = [row[metric] for row in rows]
        low, high = bootstrap_interval(_by_scene(rows, metric))
        summary[metric] = {
            "mean": statistics.fmean(values),
            "ci95": [low, high],
            "single_object_mean": _mean_where(rows, metric, objects=1),
            "two_object_mean": _mean_where(rows, metric, objects=2),
            "by_class": {
                name: _mean_where(rows, metric, target=index) for index, name in enumerate(CLASSES)
            },
        }
    return summary


def _mean_where(rows: Sequence[dict], metric: str, **where: int) -> float | None:
    values = [row[metric] for row in rows if all(row[k] == v for k, v in where.items())]
    return statistics.fmean(values) if values else None


def paired_difference(
    rows: Sequence[dict], baseline_rows: Sequence[dict], metric: str
) -> dict[str, float | list[float]]:
    """A method minus a baseline on the same maps: mean, 95% bootstrap interval over scenes,
    and the share of maps where the method is better (ties count half)."""
    theirs = {(row["seed"], row["target"]): row[metric] for row in baseline_rows}
    differences = [
        {"seed": row["seed"], "d": row[metric] - theirs[(row["seed"], row["target"])]}
        for row in rows
    ]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    better = [1.0 if sign * d["d"] > 0 else 0.5 if d["d"] == 0 else 0.0 for d in differences]
    low, high = bootstrap_interval(_by_scene(differences, "d"))
    return {
        "mean": statistics.fmean(d["d"] for d in differences),
        "ci95": [low, high],
        "better_share": statistics.fmean(better),
    }


def beats(summary: dict[str, dict], baseline: dict[str, dict], metric: str) -> bool:
    """Whether one mean is better than another's, in the metric's direction."""
    mine, theirs = summary[metric]["mean"], baseline[metric]["mean"]
    return mine < theirs if metric in LOWER_IS_BETTER else mine > theirs


# -- the report -----------------------------------------------------------------------------------


def machine() -> str:
    cpu = cpu_name()
    cores = len(os.sched_getaffinity(0))
    return (
        f"{cpu}, {cores} cores, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def markdown(result: dict) -> str:
    metrics = result["metrics"]
    lines = [
        "# Faithfulness on the demo scenes",
        "",
        f"`demo:shapes`, {result['scenes']} held-out scenes ({result['single']} single-object + "
        f"{result['pairs']} two-object), one map per object for its true class: "
        f"{result['maps']} maps per row. Each cell: the mean, and a 95% bootstrap interval over "
        "scenes. Methods at the default layer (`features`, 8×8), upsampled bilinearly to 128²; "
        "random: noise at 8×8 upsampled the same way; center: a centred Gaussian; edges: Sobel. "
        "Metrics with `gradcam_cli.faithfulness` defaults (probability of the target; "
        "deletion/insertion 20 steps onto the mean colour; ROAD at 10…90%). Shares, not "
        "percentages: average drop and increase are 0…1.",
        "",
        "| map | " + " | ".join(HEADERS[m] for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for source, summary in result["summary"].items():
        cells = []
        for metric in metrics:
            entry = summary[metric]
            low, high = entry["ci95"]
            cells.append(f"{entry['mean']:.3f} [{low:.3f}, {high:.3f}]")
        lines.append(f"| {_source_name(source)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        *verdict_lines(result),
        "",
        *by_class_lines(result),
        "",
        *perturbed_lines(result),
        "",
        *provenance_lines(result),
    ]
    return "\n".join([*lines, ""])


def _source_name(source: str) -> str:
    return f"*{source}*" if source in BASELINES else f"`{source}`"


def by_class_lines(result: dict) -> list[str]:
    """Deletion and insertion AUC per target class: where a protocol's substrate favours a class."""
    wanted = [m for m in ("deletion_auc", "insertion_auc") if m in result["metrics"]]
    if not wanted:
        return []
    lines = [
        "By the target's class, " + " / ".join(HEADERS[m] for m in wanted) + ":",
        "",
        "| map | " + " | ".join(CLASSES) + " |",
        "|---|" + "---|" * len(CLASSES),
    ]
    for source, summary in result["summary"].items():
        cells = []
        for name in CLASSES:
            found = [summary[m]["by_class"][name] for m in wanted]
            cells.append(" / ".join("–" if v is None else f"{v:.2f}" for v in found))
        lines.append(f"| {_source_name(source)} | " + " | ".join(cells) + " |")
    return lines


def perturbed_lines(result: dict) -> list[str]:
    seen = result.get("perturbed_top_classes", {})
    if not seen:
        return []
    lines = [
        f"What the model calls the perturbed images of the {result['single']} single-object "
        f"scenes: the share of maps by top class ({' / '.join(CLASSES)}) of the image with the "
        f"map's top {PEEK_DELETED:.0%} of pixels set to the mean colour (deletion at that step), "
        "and of the image times the map (average drop's input). A hole or a window has a shape "
        "of its own, and these scenes are shapes: where one class takes nearly every map, "
        "deletion and drop measure the model's reading of that shape, not the map's order.",
        "",
        f"| map | top {PEEK_DELETED:.0%} deleted | image × map |",
        "|---|---|---|",
    ]
    truth = " / ".join(f"{result['single_object_classes'][name]:.0%}" for name in CLASSES)
    lines.append(f"| the objects' true classes | {truth} | {truth} |")
    for source, shares in seen.items():
        cells = [" / ".join(f"{shares[k][name]:.0%}" for name in CLASSES) for k in shares]
        lines.append(f"| {_source_name(source)} | " + " | ".join(cells) + " |")
    return lines


def verdict_lines(result: dict) -> list[str]:
    paired = result.get("gradcam_vs_baselines", {})
    if not paired:
        return []
    lines = [
        "Grad-CAM against each baseline, paired on the same maps (difference of the means, its 95% "
        "bootstrap interval, and the share of maps where Grad-CAM is better):",
        "",
    ]
    for baseline, by_metric in paired.items():
        parts = []
        for metric, entry in by_metric.items():
            low, high = entry["ci95"]
            parts.append(
                f"{metric} {entry['mean']:+.3f} [{low:+.3f}, {high:+.3f}], better on "
                f"{100 * entry['better_share']:.0f}%"
            )
        verdict = "beats" if result["gradcam_beats"][baseline] else "does NOT beat"
        lines.append(f"- **{verdict} {baseline}**: " + "; ".join(parts) + ".")
    return lines


def provenance_lines(result: dict) -> list[str]:
    cost = result["measuring"]
    load = cost["load_average"]
    load_text = (
        "the machine's load average (1 min) as the maps were measured: median "
        f"{load['median']:.1f}, {load['min']:.1f}–{load['max']:.1f}"
        if load
        else "the load was not recorded"
    )
    return [
        f"Reported {result['date']} on {result['machine']} by `{result['command']}`. Measuring "
        f"one map's six metrics took a median of {cost['median_seconds_per_map']:.1f} s, "
        f"{cost['total_seconds'] / 3600:.1f} h for all (most of it ROAD's imputation); "
        f"{load_text}. Other agents shared the 2-core machine: that changes the times, not the "
        f"values.{_copied_text(cost)}",
    ]


def _copied_text(cost: dict) -> str:
    copied = cost.get("copied_maps", 0)
    if not copied:
        return ""
    return (
        f" {copied} maps equal bit for bit to another row's map (same scene and target) were not "
        "measured again: their values are that row's (`same_map_as` in the checkpoint)."
    )


def measuring_cost(rows: Iterable[dict]) -> dict:
    """From the rows (this run's and the checkpoint's): seconds per map, and the load."""
    rows = list(rows)
    seconds = [row["seconds"] for row in rows if "seconds" in row]
    loads = [row["load"] for row in rows if "load" in row]
    return {
        "copied_maps": sum("same_map_as" in row for row in rows),
        "median_seconds_per_map": statistics.median(seconds) if seconds else 0.0,
        "total_seconds": sum(seconds),
        "load_average": {"median": statistics.median(loads), "min": min(loads), "max": max(loads)}
        if loads
        else {},
    }


# -- the run --------------------------------------------------------------------------------------


def read_checkpoint(path: Path | None) -> dict[tuple, dict]:
    if path is None or not path.exists():
        return {}
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short when a run was stopped: measured again
            continue
        rows[row["source"], row["seed"], row["target"]] = row
    return rows


def checkpoint_writer(path: Path | None):
    if path is None:
        return None

    def write(row: dict) -> None:
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")

    return write


def parse_sources(text: str | None) -> list[str]:
    """--methods: method and baseline names; by default every method and the three baselines."""
    if not text:
        return [*METHODS, *BASELINES]
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in METHODS and name not in BASELINES]
    if unknown:
        known = ", ".join([*METHODS, *BASELINES])
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; choose from {known}")
    return names


def build_result(
    rows_by_source: dict[str, list[dict]],
    scenes: Sequence[HeldoutScene],
    cam_size: tuple[int, int],
    command: str,
) -> dict:
    """The JSON report: what was measured, how, on what, and the summaries."""
    summary = {source: summarize(rows, METRIC_NAMES) for source, rows in rows_by_source.items()}
    result = {
        "schema_version": 1,
        "model": "demo:shapes",
        "classes": list(CLASSES),
        "scenes": len(scenes),
        "single": sum(len(s.labels) == 1 for s in scenes),
        "pairs": sum(len(s.labels) == 2 for s in scenes),
        "maps": len(next(iter(rows_by_source.values()))),
        "targets": "every object's true class",
        "metrics": list(METRIC_NAMES),
        "settings": dataclasses.asdict(MetricSettings()),
        "cam_size": list(cam_size),
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "summary": summary,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "command": command,
        "measuring": measuring_cost(row for rows in rows_by_source.values() for row in rows),
    }
    if {"gradcam", *BASELINES} <= set(rows_by_source):
        compared = ("deletion_auc", "insertion_auc")
        result["gradcam_vs_baselines"] = {
            baseline: {
                metric: paired_difference(
                    rows_by_source["gradcam"], rows_by_source[baseline], metric
                )
                for metric in compared
            }
            for baseline in BASELINES
        }
        result["gradcam_beats"] = {
            baseline: all(beats(summary["gradcam"], summary[baseline], m) for m in compared)
            for baseline in BASELINES
        }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=300, help="held-out scenes (default 300)")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods and baselines (default: all methods, random, center, edges)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: fastest on a busy box)"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="JSON lines, one per map")
    parser.add_argument("--out", type=Path, default=RESULTS, help="path stem for .md and .json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sources = parse_sources(args.methods)
    started = time.perf_counter()

    loaded = load_model("demo:shapes")
    scenes = heldout_scenes(args.scenes, loaded)
    cam_size = cam_resolution(loaded)
    done = read_checkpoint(args.checkpoint)
    write = checkpoint_writer(args.checkpoint)
    rows_by_source, seconds, same_maps = {}, {}, {}
    for source in sources:
        began = time.perf_counter()
        rows_by_source[source] = measure_source(
            source, loaded, scenes, METRIC_NAMES, args.batch_size, cam_size, done, write, same_maps
        )
        seconds[source] = time.perf_counter() - began
        print(f"{source}: {seconds[source]:.0f} s", file=sys.stderr, flush=True)

    perturbed = {
        source: perturbed_top_classes(source, loaded, scenes, args.batch_size, cam_size)
        for source in sources
    }
    command = "python benchmarks/faithfulness.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    result = build_result(rows_by_source, scenes, cam_size, command)
    result["seconds"], result["seconds_by_source"] = time.perf_counter() - started, seconds
    result["perturbed_top_classes"] = perturbed
    single = [scene.labels[0] for scene in scenes if len(scene.labels) == 1]
    result["single_object_classes"] = {
        name: single.count(index) / max(1, len(single)) for index, name in enumerate(CLASSES)
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    args.out.with_suffix(".json").write_text(
        json.dumps(result, indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8"
    )
    print(text)


if __name__ == "__main__":
    main()
