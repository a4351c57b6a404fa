"""The `gradcam` command: options → one library call → exit code. Nothing else lives here.

torch is imported inside the commands, never at module level, so `gradcam --help` stays fast.
Exit codes: 0 every input explained; 1 some inputs failed; 2 usage or configuration error found
before any image was processed; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM)
(docs/unattended.md, "Exit codes").
"""

from __future__ import annotations

import contextlib
import gc
import os
import shlex
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from . import progress
from .clihelp import ReadableCommand, examples_epilog
from .errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, GradcamError, as_cli_flags, first_line
from .methods import METHODS, method_option_help
from .render import INTERPOLATIONS, NORMALIZATIONS
from .signals import EXIT_INTERRUPTED, EXIT_TERMINATED, StopState, signal_received, stop_signals
from .stdio import EXIT_PIPE_CLOSED, StdoutClosed, data_stdout, silence_stdout

if TYPE_CHECKING:
    from .job import Job, JobOptions
    from .report import Report

# The command line as typed, set by `main` (the console script): the --resume hint repeats it.
# None when the app is driven another way (a test's CliRunner).
_invocation: list[str] | None = None


# Recent Typer vendors its own Click (typer._click), older Typer uses Click itself: take Click's
# exception base from a public Typer name, whichever Click that is. mypy reads the vendored one,
# the Click of the Typer this project is checked with.
if TYPE_CHECKING:
    from collections.abc import Sequence

    from typer._click.exceptions import ClickException as _ClickException
else:
    _ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneStyleGroup(TyperGroup):
    """Click's own usage errors (unknown option, missing argument, a value of the wrong type)
    in the one style of every other error: `gradcam: error: ...` on one line, exit 2."""

    def main(  # Click's own signature: callers may pass any of these by position
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except _ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `gradcam`: the help, as before
                exc.show()
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)  # usage errors know their command; others do not
            where = ctx.command_path if ctx else "gradcam"
            message = " ".join(exc.format_message().split())
            typer.echo(f"gradcam: error: {message} (see `{where} --help`)", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("gradcam: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


app = typer.Typer(
    cls=_OneStyleGroup,
    name="gradcam",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"gradcam-cli {__version__}")
        raise typer.Exit()


@app.callback(epilog=examples_epilog("gradcam"))
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Explain what a PyTorch image classifier looked at (Grad-CAM), from timm, torchvision or
    your own model."""


# -- option bundles shared by the commands ---------------------------------------------------

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        metavar="MODEL",
        help="timm:NAME, torchvision:NAME, a bare NAME (timm first, then "
        "torchvision), or path/to/file.py:callable / package.module:callable for your own model.",
    ),
]
PretrainedOpt = Annotated[
    bool,
    typer.Option(
        "--pretrained/--no-pretrained",
        help="Download the model's pretrained weights "
        "(--no-pretrained: random init, works offline).",
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        metavar="FILE",
        help="Local state_dict (.pt/.pth loaded with weights_only=True, or "
        ".safetensors) for the named architecture.",
        dir_okay=False,
    ),
]
NumClassesOpt = Annotated[
    int | None,
    typer.Option(
        "--num-classes",
        metavar="N",
        help="Build the model with N outputs (for checkpoints with another head).",
    ),
]
InputSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--input-size",
        metavar="PIXELS",
        help="The model's input, PIXELS×PIXELS (default: the model's own). The photo is "
        "fitted to it as --resize says; with crop (most models' default) its shorter side is "
        "resized in the model's own ratio (to 256 for 224 with most), then the centre "
        "PIXELS×PIXELS is cropped.",
    ),
]
InputsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="IMAGE|DIR|GLOB|-",
        show_default=False,
        help="Image files, folders (recursive), globs, or - to read paths from stdin.",
    ),
]
LabelsOpt = Annotated[
    Path | None,
    typer.Option(
        "--labels", metavar="FILE", help="Class names, one per line, in class-index order."
    ),
]
MethodOpt = Annotated[str, typer.Option(metavar="NAME", help=f"Method: {', '.join(METHODS)}.")]
DeviceOpt = Annotated[
    str,
    typer.Option(
        metavar="DEVICE", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")]
# tasks.TASKS's names, spelt here so that --help does not import torch (test_cli checks them).
TASK_NAMES = ("classification", "segmentation", "detection")
# The gates of a comparison (`gradcam compare`, `gradcam explain --baseline`).
MinCorrOpt = Annotated[
    float | None,
    typer.Option(
        "--min-corr",
        metavar="R",
        help="Gate: exit 1 when a pair's maps correlate less than R (Pearson, -1..1).",
    ),
]
MaxShiftOpt = Annotated[
    float | None,
    typer.Option(
        "--max-shift",
        metavar="PIXELS",
        help="Gate: exit 1 when a map's peak moved more than PIXELS on the photo.",
    ),
]
MaxEnergyMovedOpt = Annotated[
    float | None,
    typer.Option(
        "--max-energy-moved",
        metavar="SHARE",
        help="Gate: exit 1 when more than SHARE (0..1) of a map's energy moved (1 − the "
        "histogram intersection of the maps scaled to sum 1).",
    ),
]
MaxTop1ChangesOpt = Annotated[
    int | None,
    typer.Option(
        "--max-top1-changes",
        metavar="N",
        help="Gate: exit 1 when more than N images changed their predicted class.",
    ),
]


@contextmanager
def _exit_codes(verbose: bool) -> Iterator[None]:
    """Turn library errors into one stderr line and the documented exit code, and warnings
    into one line each."""
    try:
        with _one_line_warnings(verbose):
            yield
    except KeyboardInterrupt as exc:  # before any image (a run reports its own interruption)
        _log("interrupted")
        raise typer.Exit(StopState().exit_code(exc)) from None
    except StdoutClosed:  # `gradcam models | head -1`: stop quietly, as `ls | head` does
        silence_stdout()
        raise typer.Exit(EXIT_PIPE_CLOSED) from None
    except SystemExit as exc:  # code of the user's that slipped past the checks of its calls
        if verbose:
            traceback.print_exc()
        _log(
            f"error: something called sys.exit({exc.code!r}) while gradcam was running: a "
            "model file or one of its imports must not exit"
        )
        raise typer.Exit(EXIT_USAGE) from None
    except GradcamError as exc:
        if verbose:
            traceback.print_exc()
        _log(f"error: {as_cli_flags(str(exc))}")  # the library names device=, the CLI --device
        raise typer.Exit(exc.exit_code) from None
    except typer.Exit:
        raise
    except Exception as exc:  # a bug, not a user error: still one line unless --verbose
        if verbose:
            traceback.print_exc()
        _log(
            f"internal error: {type(exc).__name__}: {first_line(exc)} "
            "(rerun with --verbose for the traceback)"
        )
        raise typer.Exit(EXIT_SOME_FAILED) from None


@contextmanager
def _one_line_warnings(verbose: bool) -> Iterator[None]:
    """Warnings (ours, e.g. a head-only fallback, or a dependency's) as `gradcam: warning: ...`,
    one line each; --verbose keeps Python's format, which names the source line."""
    if verbose:
        yield
        return
    with warnings.catch_warnings():
        # Pillow's pixel-limit warning precedes the input's own error result, which says more
        # (matched by its text: importing Pillow for its class would slow every start-up).
        warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
        warnings.showwarning = _show_warning
        yield


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _log(f"warning: {as_cli_flags(' '.join(str(message).split()))}")


def _note(message: str) -> None:
    """A library's note (it names its parameters, out=) in the CLI's words (--out)."""
    _log(as_cli_flags(message))


def _log(message: str) -> None:
    """One line on stderr; above the progress bar while one is drawn (progress.py)."""
    bar = progress.active()
    if bar is not None:
        bar.print(f"gradcam: {message}")
    else:
        typer.echo(f"gradcam: {message}", err=True)


@app.command(
    cls=ReadableCommand,
    short_help="Explain images: overlays, heatmaps and a JSON of the predictions.",
    epilog=examples_epilog("explain"),
)
def explain(
    inputs: InputsArg,
    model: ModelOpt,
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer",
            "-l",
            metavar="LAYER",
            help="Target layer(s): dotted path (layer4, layer4.2, features.-1), "
            "comma-separated or repeated for several in one pass; name@N picks the Nth call of a "
            "module that runs several times. Default: the last spatial layer the logits depend on.",
        ),
    ] = None,
    method: MethodOpt = "gradcam",
    aug_smooth: Annotated[
        bool,
        typer.Option(
            "--aug-smooth",
            help="Average the maps of the image, its mirror image and copies scaled by 0.9 and "
            "1.1, each mapped back (6 passes; the map is then in [0, 1]).",
        ),
    ] = False,
    eigen_smooth: Annotated[
        bool,
        typer.Option(
            "--eigen-smooth",
            help="Combine the layer's weighted channels by their first principal component "
            "instead of their sum.",
        ),
    ] = False,
    k_sigma: Annotated[
        float | None,
        typer.Option("--k-sigma", metavar="K", help=f"{method_option_help('k_sigma')}."),
    ] = None,
    kernel: Annotated[
        str | None,
        typer.Option("--kernel", metavar="NAME", help=f"{method_option_help('kernel')}."),
    ] = None,
    kernel_gamma: Annotated[
        float | None,
        typer.Option("--kernel-gamma", metavar="G", help=f"{method_option_help('kernel_gamma')}."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", metavar="N", help=f"{method_option_help('seed')}."),
    ] = None,
    comparisons: Annotated[
        int | None,
        typer.Option("--comparisons", metavar="N", help=f"{method_option_help('comparisons')}."),
    ] = None,
    comparison_strength: Annotated[
        float | None,
        typer.Option(
            "--comparison-strength",
            metavar="A",
            help=f"{method_option_help('comparison_strength')}.",
        ),
    ] = None,
    comparison_weights: Annotated[
        str | None,
        typer.Option(
            "--comparison-weights",
            metavar="HOW",
            help=f"{method_option_help('comparison_weights')}.",
        ),
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option("--objective", metavar="NAME", help=f"{method_option_help('objective')}."),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option("--samples", metavar="N", help=f"{method_option_help('samples')}."),
    ] = None,
    noise_std: Annotated[
        float | None,
        typer.Option("--noise-std", metavar="S", help=f"{method_option_help('noise_std')}."),
    ] = None,
    scales: Annotated[
        int | None,
        typer.Option("--scales", metavar="N", help=f"{method_option_help('scales')}."),
    ] = None,
    scale_step: Annotated[
        float | None,
        typer.Option("--scale-step", metavar="F", help=f"{method_option_help('scale_step')}."),
    ] = None,
    window_stride: Annotated[
        float | None,
        typer.Option(
            "--window-stride", metavar="F", help=f"{method_option_help('window_stride')}."
        ),
    ] = None,
    keep_patches: Annotated[
        float | None,
        typer.Option("--keep-patches", metavar="F", help=f"{method_option_help('keep_patches')}."),
    ] = None,
    fusion: Annotated[
        str | None,
        typer.Option("--fusion", metavar="HOW", help=f"{method_option_help('fusion')}."),
    ] = None,
    base_method: Annotated[
        str | None,
        typer.Option("--base-method", metavar="NAME", help=f"{method_option_help('base_method')}."),
    ] = None,
    head_fusion: Annotated[
        str | None,
        typer.Option("--head-fusion", metavar="HOW", help=f"{method_option_help('head_fusion')}."),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            metavar="CLASS",
            help="Class to explain, by index or label; repeat for several. Default: the "
            "predicted class. A model with a single output (one logit or a sigmoid) has two "
            "classes, 0 negative and 1 positive: -t 1 explains the positive one on every image, "
            "where the predicted class would change from image to image.",
        ),
    ] = None,
    topk: Annotated[
        int,
        typer.Option(
            "--topk",
            "-k",
            metavar="K",
            help="Explain each image's K most probable classes (a segmentation model's K "
            "classes covering the most pixels, a detector's K best detections).",
        ),
    ] = 1,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            metavar="TASK",
            help=f"What the model does: {', '.join(TASK_NAMES)}. Default: what it is known to "
            "be (torchvision's segmentation models and detectors), else classification; give it "
            "for your own segmentation model or detector.",
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            "--min-score",
            metavar="0..1",
            help="Detectors: explain only detections scoring at least this (with -t: of those "
            "classes; with --topk: the K best of them).",
        ),
    ] = None,
    region: Annotated[
        Path | None,
        typer.Option(
            "--region",
            metavar="MASK",
            help="Segmentation: sum each target class's logits over this mask (an image of the "
            "photo's size, non-zero inside) instead of over the pixels predicted as the class.",
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Output folder for PNGs and predictions.json; one run at a time (a lock).",
        ),
    ] = Path("gradcam_out"),
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Also print the JSON report to stdout (stdout then carries nothing else).",
        ),
    ] = False,
    pretrained: PretrainedOpt = True,
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    labels: LabelsOpt = None,
    input_size: InputSizeOpt = None,
    resize: Annotated[
        str | None,
        typer.Option(
            "--resize",
            metavar="MODE",
            help="How the photo is fitted to the model's square input: crop (shorter side "
            "resized, centre cropped), squash (the whole photo resized, aspect not kept: "
            "torchvision's Resize((H, W)), how many home-made models are trained) or pad "
            "(letterboxed, the borders in the mean colour). Default: the model's own "
            "convention (its timm/torchvision config; crop for your own models). The maps are "
            "placed back on the photo through the same geometry.",
        ),
    ] = None,
    mean: Annotated[
        tuple[float, float, float] | None,
        typer.Option("--mean", metavar="R G B", help="Normalisation mean, three numbers R G B."),
    ] = None,
    std: Annotated[
        tuple[float, float, float] | None,
        typer.Option("--std", metavar="R G B", help="Normalisation std, three numbers R G B."),
    ] = None,
    colormap: Annotated[
        str,
        typer.Option(
            metavar="NAME", help="Any matplotlib colormap name (jet, turbo, viridis, inferno, ...)."
        ),
    ] = "jet",
    alpha: Annotated[
        float, typer.Option(metavar="0..1", help="Heatmap opacity in the overlay, 0 to 1.")
    ] = 0.5,
    interpolation: Annotated[
        str, typer.Option(metavar="MODE", help=f"Map upsampling: {', '.join(INTERPOLATIONS)}.")
    ] = "bilinear",
    normalize: Annotated[
        str,
        typer.Option(
            metavar="MODE",
            help=f"Map scaling before upsampling and colouring: {', '.join(NORMALIZATIONS)} "
            "(minmax: per map to [0, 1]; max: divide by the max; none: raw values clipped to "
            "[0, 1]).",
        ),
    ] = "minmax",
    image_format: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="Overlay file format: png (lossless) or jpg (quality 90: smaller and much "
            "faster to write, for large runs). Heatmaps stay PNG: they are transparent outside "
            "the crop.",
        ),
    ] = "png",
    heatmap: Annotated[
        bool,
        typer.Option("--heatmap/--no-heatmap", help="Also write the RGBA heatmap PNGs."),
    ] = True,
    save_raw: Annotated[
        bool,
        typer.Option(
            "--save-raw",
            help="Also write each raw map as .npy (float32, feature-map size, "
            "after ReLU, before resizing or normalising).",
        ),
    ] = False,
    panel: Annotated[
        bool,
        typer.Option(
            "--panel",
            help="Also write one figure per image × target × layer (KEY...panel.png): photo, "
            "heatmap, overlay (and guided image) side by side, a colour bar and a caption.",
        ),
    ] = False,
    report_page: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Also write OUT/index.html, a self-contained page to browse the run "
            "(thumbnails, filters, errors); `gradcam report OUT` rebuilds it.",
        ),
    ] = False,
    mask: Annotated[
        Path | None,
        typer.Option(
            "--mask",
            metavar="PATH",
            help="True object mask(s): one image file for every input, or a folder matched by "
            "input name (KEY.LABEL.png, KEY.INDEX.png, then KEY.png). Adds hit, energy and IoU "
            "to each explanation's JSON.",
        ),
    ] = None,
    min_energy: Annotated[
        float | None,
        typer.Option(
            "--min-energy",
            metavar="SHARE",
            help="Gate: exit 1 when an explanation puts less than SHARE (0..1) of its map "
            "inside the mask. Needs --mask.",
        ),
    ] = None,
    require_hit: Annotated[
        bool,
        typer.Option(
            "--require-hit",
            help="Gate: exit 1 when a map's maximum falls outside the mask. Needs --mask.",
        ),
    ] = False,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            metavar="LIST",
            help="Measure each map's faithfulness (no mask needed), comma-separated: deletion, "
            "insertion (AUC of the target's probability as pixels are removed/revealed in the "
            "map's order), drop (average drop and increase in confidence on the image times "
            "the map), road (ROAD MoRF/LeRF: noisy linear imputation), or all. Costs the "
            "model on each map's perturbed copies (docs/faithfulness.md).",
        ),
    ] = None,
    baselines: Annotated[
        str | None,
        typer.Option(
            "--baselines",
            metavar="LIST",
            help="Also measure the metrics for baseline maps, comma-separated: random (seeded, "
            "at the map's resolution), center (a centred Gaussian), edges (Sobel), so a "
            "number means something. Needs --metrics.",
        ),
    ] = None,
    gate: Annotated[
        list[str] | None,
        typer.Option(
            "--gate",
            metavar="EXPR",
            help="Exit 1 when an explanation fails NAME>=VALUE or NAME<=VALUE (repeatable): a "
            "metric (insertion_auc>=0.4, deletion_auc<=0.2, average_drop, "
            "increase_in_confidence, road_morf, road_lerf; measured with --metrics) or a "
            "localization figure (hit, energy, iou; with --mask). One stderr line per failure.",
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            metavar="RUN",
            help="After the run, compare it with the run in folder RUN (made with --save-raw) "
            "as `gradcam compare RUN OUT` does: OUT/comparison.json (and comparison.html with "
            "--report), and the gates --min-corr, --max-shift, --max-energy-moved, "
            "--max-top1-changes. Implies --save-raw.",
            file_okay=False,
        ),
    ] = None,
    min_corr: MinCorrOpt = None,
    max_shift: MaxShiftOpt = None,
    max_energy_moved: MaxEnergyMovedOpt = None,
    max_top1_changes: MaxTop1ChangesOpt = None,
    metric_steps: Annotated[
        int,
        typer.Option(
            "--metric-steps",
            metavar="N",
            help="Deletion/insertion: pixels removed or revealed in N steps of 1/N (torchcam's "
            "20).",
        ),
    ] = 20,
    deletion_substrate: Annotated[
        str,
        typer.Option(
            "--deletion-substrate",
            metavar="KIND",
            help="What a deleted pixel becomes: zeros (the mean colour, torchcam's) or blur "
            "(the image blurred, RISE's).",
        ),
    ] = "zeros",
    insertion_substrate: Annotated[
        str,
        typer.Option(
            "--insertion-substrate",
            metavar="KIND",
            help="What insertion starts from: zeros (torchcam's) or blur (RISE's).",
        ),
    ] = "zeros",
    metric_score: Annotated[
        str,
        typer.Option(
            "--metric-score",
            metavar="KIND",
            help="The score the metrics watch: probability (the softmax, as the papers) or "
            "logit (torchcam's metrics without logits_fn).",
        ),
    ] = "probability",
    road_percentiles: Annotated[
        str,
        typer.Option(
            "--road-percentiles",
            metavar="LIST",
            help="ROAD: the percentiles averaged over (pytorch-grad-cam's 10…90); at p, "
            "(100 − p)% of the pixels are imputed.",
        ),
    ] = "10,20,30,40,50,60,70,80,90",
    road_noise: Annotated[
        float,
        typer.Option(
            "--road-noise",
            metavar="SD",
            help="ROAD: the imputation noise's standard deviation (pytorch-grad-cam's 0.01).",
        ),
    ] = 0.01,
    road_selection: Annotated[
        str,
        typer.Option(
            "--road-selection",
            metavar="KIND",
            help="ROAD: threshold (pytorch-grad-cam: pixels tied at the percentile all go) or "
            "rank (ROAD's code: exactly (100 − p)%).",
        ),
    ] = "threshold",
    metric_seed: Annotated[
        int,
        typer.Option(
            "--metric-seed",
            metavar="N",
            help="Seeds ROAD's noise and, with each input's name, the random baseline.",
        ),
    ] = 0,
    batch_size: Annotated[
        str,
        typer.Option(
            "--batch-size",
            "-b",
            metavar="N|auto",
            help="Images per forward pass. auto: sized from what the model's forward writes per "
            "image and the memory available (at most 64); predictions.json records the size used.",
        ),
    ] = "auto",
    device: DeviceOpt = "auto",
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            "-j",
            metavar="N",
            help="Processes that decode and preprocess images while the model runs; 0 decodes "
            "on a thread instead. auto: 0 on 2 cores or fewer, else half the cores, at most 4.",
        ),
    ] = "auto",
    decode: Annotated[
        str,
        typer.Option(
            "--decode",
            metavar="WHERE",
            help="Where JPEGs are decoded and preprocessed: device (on the model's device with "
            "torchvision; other files still by Pillow), cpu (Pillow), or auto: device on a CUDA "
            "GPU, else cpu.",
        ),
    ] = "auto",
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="K/N",
            help="Explain only the K-th of N disjoint shares of the inputs (chosen by a hash of "
            "each input's name), for N processes or machines; the report is "
            "predictions.K-of-N.json.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Finish an interrupted run: take over the images the report in --out lists as "
            "done (their files still there) and explain only the rest. Refused if that report "
            "comes from other options.",
        ),
    ] = False,
    amp: Annotated[
        str | None,
        typer.Option(
            "--amp",
            metavar="DTYPE",
            help="Run the model in bf16 or fp16 autocast (fp16: GPU only); maps and scores are "
            "still computed in float32.",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Explain images: overlay and heatmap PNGs per image × target × layer, plus a JSON report."""
    # While the run goes on, descriptor 1 leads to stderr: a user's model that prints (from
    # Python, C or a child process) cannot put text before the JSON.
    with _exit_codes(verbose), stop_signals() as stop, data_stdout() as stdout:
        if progress.on_terminal():  # checking the options imports torch: seconds of silence
            _log(f"loading {model}…")
        from .compare import baseline_gates
        from .job import JobOptions, prepare_job

        gates = baseline_gates(
            baseline,
            min_corr=min_corr,
            max_shift=max_shift,
            max_energy_moved=max_energy_moved,
            max_top1_changes=max_top1_changes,
        )
        options = JobOptions(
            out=out,
            pretrained=pretrained,
            weights=weights,
            num_classes=num_classes,
            labels=labels,
            input_size=input_size,
            resize=resize,
            mean=mean,
            std=std,
            layers=layer,
            method=method,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            k_sigma=k_sigma,
            kernel=kernel,
            kernel_gamma=kernel_gamma,
            seed=seed,
            comparisons=comparisons,
            comparison_strength=comparison_strength,
            comparison_weights=comparison_weights,
            objective=objective,
            samples=samples,
            noise_std=noise_std,
            scales=scales,
            scale_step=scale_step,
            window_stride=window_stride,
            keep_patches=keep_patches,
            fusion=fusion,
            base_method=base_method,
            head_fusion=head_fusion,
            device=device,
            amp=amp,
            targets=target or (),
            topk=topk,
            task=task,
            min_score=min_score,
            region=region,
            colormap=colormap,
            alpha=alpha,
            interpolation=interpolation,
            normalize=normalize,
            overlay_format=image_format,
            heatmap=heatmap,
            save_raw=save_raw,
            panel=panel,
            report_page=report_page,
            mask=mask,
            min_energy=min_energy,
            require_hit=require_hit,
            batch_size=batch_size,
            workers=workers,
            decode=decode,
            shard=shard,
            resume=resume,
            metrics=metrics or (),
            baselines=baselines or (),
            gates=gate or (),
            baseline=baseline,
            metric_settings=_metric_settings(
                steps=metric_steps,
                deletion_substrate=deletion_substrate,
                insertion_substrate=insertion_substrate,
                score=metric_score,
                road_percentiles=road_percentiles,
                road_noise=road_noise,
                road_seed=metric_seed,
                road_selection=road_selection,
            ),
        )
        job = prepare_job(inputs, model, options, on_note=_note, stdin=sys.stdin)
        with progress.ProgressBar(len(job.items)) as bar:  # drawn on a terminal only
            report = job.run(on_status=bar.update)
        code = _finish(job, report, inputs, json_out, stop, stdout)
        if baseline is not None and not (report.interrupted or report.write_error):
            code = max(code, _compare_after_run(baseline, out, gates, page=report_page))
    raise typer.Exit(code)


def _metric_settings(**given: Any):
    """The metrics' protocol from its flags; None when every flag has its default (so the flags
    alone, without --metrics, are no error)."""
    from .faithfulness import MetricSettings, parse_percentiles

    given["road_percentiles"] = parse_percentiles(given["road_percentiles"])
    settings = MetricSettings(**given)
    return None if settings == MetricSettings() else settings


def _finish(
    job: Job, report: Report, inputs: list[str], json_out: bool, stop: StopState, stdout
) -> int:
    """Tell what the run did, on stderr; the JSON on stdout with --json; the exit code."""
    for result in report.results:
        for warning in result.warnings:
            _log(f"warning: {result.input}: {warning}")
        if result.status != "ok":
            _log(f"{result.input}: {result.error}")
    _log_localization(report)
    _log_faithfulness(report)
    _log_run_notes(report, job.run_options.batch_size)
    summary: Any = report.to_dict()["summary"]
    if report.interrupted:
        _log(
            f"interrupted: {summary['ok']} of {len(job.items)} images explained "
            f"({summary['errors']} failed) in {summary['seconds']:.1f}s; report: "
            f"{job.report_path}; finish with: {_resume_command(inputs)}"
        )
    else:
        pace = progress.pace_note(summary, job.run_options, report.device)  # if not the model
        _log(
            f"{summary['ok']}/{summary['images']} images explained in "
            f"{summary['seconds']:.1f}s; report: {job.report_path}" + (f"; {pace}" if pace else "")
        )
        _log_page(job.options)
    if json_out:
        try:
            stdout.write(report.to_json())
        except StdoutClosed:
            silence_stdout()
            return EXIT_PIPE_CLOSED
    if report.interrupted:
        return stop.exit_code()
    if report.write_error:
        _log(f"error: {report.write_error}")
        return EXIT_SOME_FAILED
    return EXIT_SOME_FAILED if report.errors or report.gate_failures else EXIT_OK


def _resume_command(inputs: list[str]) -> str:
    """The command that finishes an interrupted run: the same one, with --resume."""
    if _invocation is None:
        return "the same command with --resume"
    args = list(_invocation)
    if "--resume" not in args:
        args.append("--resume")
    command = shlex.join(["gradcam", *args])
    return command + (" (with the same paths on stdin)" if "-" in inputs else "")


def _log_run_notes(report, batch_size: int) -> None:
    """--resume's count, and a batch size cut down after running out of memory."""
    if report.resumed:
        _log(
            f"resumed: {report.resumed} image(s) already done in the previous report, "
            f"skipped; {len(report.results) - report.resumed} explained now"
        )
    if report.batch_size_reduced_to:
        _log(
            f"out of memory at --batch-size {batch_size}: batches were split, down to "
            f"{report.batch_size_reduced_to} image(s); pass --batch-size "
            f"{report.batch_size_reduced_to} to avoid the retries"
        )


def _log_page(options: JobOptions) -> None:
    from .pages.run import PAGE_NAME

    out = options.out
    if options.report_page and options.shard is None:
        _log(f"page: {out / PAGE_NAME}")
    elif options.report_page:  # one share's page shows one share: the merged report makes it
        _log(
            f"--report: when every share is done, run `gradcam merge {out}`, "
            f"then `gradcam report {out}`"
        )


def _log_localization(report) -> None:
    """With --mask: one line per explanation short of the gate, then the figures."""
    for result, record in report.localized():
        where = f"{result.input} [{record.target.label} @ {record.layer}]"
        if record.localization["passed"] is False:
            _log(f"gate failed: {where}: {'; '.join(record.localization['shortfalls'])}")
        elif record.localization["error"]:
            _log(f"{where}: {record.localization['error']}")
    figures = report.localization_summary()
    if figures and figures["measured"]:
        _log(
            f"localization over {figures['measured']} maps: hit rate {figures['hit_rate']:.3f}, "
            f"energy in mask {figures['mean_energy']:.3f} (mask share "
            f"{figures['mean_mask_share']:.3f}), IoU {figures['mean_iou']:.3f}"
            + (f"; {figures['gate_failures']} failed the gate" if figures["gate_failures"] else "")
        )


def _log_faithfulness(report) -> None:
    """With --gate: one line per explanation short of a rule. With --metrics: the means, and
    the baselines' beside them."""
    from .captions import faithfulness_text

    for result, record in report.records():
        if record.gate is not None and record.gate["passed"] is False:
            where = f"{result.input} [{record.target.label} @ {record.layer}]"
            _log(f"gate failed: {where}: {'; '.join(record.gate['shortfalls'])}")
    figures = report.faithfulness_summary()
    if figures and figures["explanations"]:
        line = f"faithfulness over {figures['explanations']} maps: "
        line += faithfulness_text(figures["means"]) or "nothing measured"
        for name, means in figures["baselines"].items():
            line += f"; {name} baseline: {faithfulness_text(means)}"
        _log(line)
    gate = report.gate_summary()
    if gate and gate["failures"]:
        _log(f"{gate['failures']} of {gate['explanations']} explanations failed --gate")


@app.command(
    cls=ReadableCommand,
    short_help="List a model's layers, their maps, and which ones can be explained.",
    epilog=examples_epilog("layers"),
)
def layers(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL", show_default=False, help="Model spec, as for explain --model."
        ),
    ],
    pretrained: Annotated[
        bool,
        typer.Option(
            "--pretrained/--no-pretrained",
            help="Download the model's pretrained weights first (default: random init, offline: "
            "the layers and their maps do not depend on the weights).",
        ),
    ] = False,
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    input_size: InputSizeOpt = None,
    usable: Annotated[
        bool, typer.Option("--usable", help="List only layers that can be explained.")
    ] = False,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            metavar="TASK",
            help=f"What the model does ({', '.join(TASK_NAMES)}), as for explain --task.",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """List a model's layers: dotted path, type, output shape, the map it gives (tokens and
    channels-last outputs are laid out as C×h×w), and which are usable targets.

    It takes explain's model options, so the table is for the model you will explain: a
    checkpoint with another head (--weights, --num-classes), another input size (the token grid
    of a ViT follows it). The weights do not change the table: random ones are used unless
    --pretrained or --weights, so this works offline.
    """
    # The user's model may print while it is built and probed: the table alone is stdout.
    with _exit_codes(verbose), stop_signals(), data_stdout() as stdout:
        from .layers import layer_table, probe_layers
        from .sources import check_input_size, check_num_classes, load_model

        check_input_size(input_size)
        check_num_classes(num_classes)
        loaded = load_model(
            model,
            pretrained=pretrained,
            weights=weights,
            num_classes=num_classes,
            input_size=input_size,
        )
        probe = probe_layers(
            loaded.model,
            loaded.preprocess.input_size,
            model_name=loaded.title,
            task=task if task is not None else loaded.task,
        )
        try:
            default = probe.default_layer()
        except GradcamError as exc:
            default = None
            _log(f"no default layer: {exc}")
        h, w = loaded.preprocess.input_size
        kind = "" if (task or loaded.task) == "classification" else f" ({task or loaded.task})"
        stdout.write(
            f"# {loaded.source}:{loaded.name}{kind}, input 3×{h}×{w}; "
            "* = usable target, > = default; map = C×h×w explained\n"
        )
        for line in layer_table(probe, default, usable_only=usable):
            stdout.write(line + "\n")


@app.command(
    cls=ReadableCommand,
    short_help="List the model names --model accepts (demo, timm, torchvision).",
    epilog=examples_epilog("models"),
)
def models(
    pattern: Annotated[
        str,
        typer.Argument(
            metavar="WORD|PATTERN",
            help="A word: the names containing it (vit). A shell-style pattern: the names as "
            "printed, library prefix included ('timm:resnet5*', '*demo*').",
        ),
    ] = "*",
    pretrained: Annotated[
        bool,
        typer.Option(
            "--pretrained",
            help="Only models with pretrained weights; timm's with their tags "
            "(timm:resnet50.a1_in1k), each a valid --model.",
        ),
    ] = False,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            metavar="TASK",
            help=f"Only the models doing this: {', '.join(TASK_NAMES)}.",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """List the model names --model accepts, with their library: the demo model, timm, and
    torchvision's classifiers, segmentation models and detectors. Exit 1 when nothing
    matches."""
    with _exit_codes(verbose), data_stdout() as stdout:
        from .sources import list_model_names, no_model_matches

        if task is not None and task not in TASK_NAMES:
            from .errors import UsageError, did_you_mean

            raise UsageError(
                f"--task takes {', '.join(TASK_NAMES)}, got '{task}'."
                + did_you_mean(task, TASK_NAMES)
            )
        names = list_model_names(pattern, pretrained=pretrained, task=task)
        for name in names:
            stdout.write(name + "\n")
        if not names:
            _log(f"error: {no_model_matches(pattern, pretrained=pretrained)}")
            raise typer.Exit(EXIT_SOME_FAILED)


@app.command(
    cls=ReadableCommand,
    short_help="Merge the reports of a run split with --shard into one.",
    epilog=examples_epilog("merge"),
)
def merge(
    folder: Annotated[
        Path,
        typer.Argument(
            metavar="DIR", show_default=False, help="The --out folder the shares wrote to."
        ),
    ],
    json_out: Annotated[
        bool, typer.Option("--json", help="Also print the merged report to stdout.")
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Merge the reports of a run split with --shard K/N into DIR/predictions.json.

    Exit 0 when every input of every share was explained (and passed the gate, if any), 1 when
    some failed, 2 when shares are missing or come from different runs.
    """
    with _exit_codes(verbose), data_stdout() as stdout:
        from .outlock import output_lock
        from .report import merge_shards

        # No share may still be writing (a missing folder: merge_shards says so, nothing made).
        with output_lock(folder) if folder.is_dir() else contextlib.nullcontext():
            target, merged = merge_shards(folder)
        if json_out:
            stdout.write(target.read_text(encoding="utf-8"))
        summary = merged["summary"]
        gate = (summary["localization"] or {}).get("gate_failures", 0)
        gate += (summary.get("gate") or {}).get("failures", 0)
        _log(
            f"merged {summary['images']} images ({summary['ok']} ok, {summary['errors']} "
            f"failed) into {target}"
        )
        code = EXIT_SOME_FAILED if summary["errors"] or gate else EXIT_OK
    raise typer.Exit(code)


@app.command(
    cls=ReadableCommand,
    short_help="Write a run's HTML page (OUT/index.html) from its report.",
    epilog=examples_epilog("report"),
)
def report(
    folder: Annotated[
        Path,
        typer.Argument(
            metavar="OUT", show_default=False, help="The --out folder of a gradcam explain run."
        ),
    ],
    verbose: VerboseOpt = False,
) -> None:
    """Write OUT/index.html from OUT/predictions.json, and any missing thumbnails from the
    overlays on disk. No model is loaded. Exit 2 when there is no readable predictions.json.
    """
    with _exit_codes(verbose):
        from .outlock import output_lock
        from .pages.run import write_page
        from .report import read_run_report

        document = read_run_report(folder)  # exit 2 when there is none, before any lock or write
        with output_lock(folder):
            page = write_page(folder, document)
        _log(f"page: {page}")


@app.command(
    cls=ReadableCommand,
    short_help="Sanity check: does the map change when the model's weights are randomised?",
    epilog=examples_epilog("sanity"),
)
def sanity(
    inputs: InputsArg,
    model: ModelOpt,
    method: MethodOpt = "gradcam",
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "-l",
            metavar="LAYER",
            help="Target layer, one (default: the last spatial layer the logits depend on); "
            "two or more, comma-separated, for --method refinecam.",
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            metavar="MODE",
            help="cascading: randomise the stages from the logits down, each with those above "
            "it; independent: each stage alone.",
        ),
    ] = "cascading",
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            metavar="CLASS",
            help="Class to explain on every image, by index or label. Default: each image's "
            "class predicted by the trained model, kept for every randomised model.",
        ),
    ] = None,
    threshold: Annotated[
        float,
        typer.Option(
            metavar="RHO",
            help="Pass when the median Spearman correlation with the trained model's map is "
            "below RHO at --by-stage.",
        ),
    ] = 0.5,
    by_stage: Annotated[
        str,
        typer.Option(
            "--by-stage",
            metavar="N|NAME",
            help="The stage the pass rule looks at: its number from the logits (1 = the head; "
            "2: the head and the last stage randomised) or its name.",
        ),
    ] = "2",
    seed: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Seed of the random weights: the k-th stage from the logits is drawn with seed "
            "N + k - 1.",
        ),
    ] = 0,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Output folder for sanity.json and sanity.png; one run at a time (a lock).",
        ),
    ] = Path("gradcam_sanity"),
    report_page: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Also write OUT/sanity.html: the table, the figure, and each image's maps "
            "before and after every randomisation.",
        ),
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="Also print sanity.json to stdout (stdout then carries nothing else)."
        ),
    ] = False,
    pretrained: PretrainedOpt = True,
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    labels: LabelsOpt = None,
    input_size: InputSizeOpt = None,
    resize: Annotated[
        str | None,
        typer.Option(
            "--resize",
            metavar="MODE",
            help="How the photo is fitted to the model's input: crop, squash or pad, as for "
            "explain. Default: the model's own convention.",
        ),
    ] = None,
    batch_size: Annotated[
        str,
        typer.Option(
            "--batch-size",
            "-b",
            metavar="N|auto",
            help="Images per forward pass (auto: sized as for explain).",
        ),
    ] = "auto",
    device: DeviceOpt = "auto",
    verbose: VerboseOpt = False,
) -> None:
    """Model-parameter randomisation (Adebayo et al. 2018): re-initialise the model's stages
    from the logits down and measure, per image and stage, how much the map still resembles the
    trained model's (Spearman rank correlation, SSIM). Writes OUT/sanity.json and the figure
    OUT/sanity.png.

    Exit 0 when the method passes (the median Spearman falls below --threshold by --by-stage),
    1 when it fails (the map survives the randomisation) or some inputs could not be read, 2 on
    a usage error.
    """
    with _exit_codes(verbose), stop_signals(), data_stdout() as stdout:
        if progress.on_terminal():
            _log(f"loading {model}…")
        from .sanity import run_sanity

        with _counted_progress() as show:
            result, paths = run_sanity(
                inputs,
                model,
                out=out,
                report=report_page,
                pretrained=pretrained,
                weights=weights,
                num_classes=num_classes,
                labels_file=labels,
                input_size=input_size,
                resize=resize,
                stdin=sys.stdin,
                on_note=_note,
                method=method,
                layer=layer,
                mode=mode,
                target=target,
                threshold=threshold,
                by_stage=by_stage,
                seed=seed,
                batch_size=batch_size,
                device=device,
                progress=show,
            )
        for source, why in result.skipped:
            _log(f"{source}: {why}")
        _log("; ".join(f"{kind}: {path}" for kind, path in paths.items()))
        if json_out:
            stdout.write(paths["json"].read_text(encoding="utf-8"))
        typer.echo(f"gradcam sanity: {result.verdict()}", err=True)
        code = EXIT_OK if result.passed and not result.skipped else EXIT_SOME_FAILED
    raise typer.Exit(code)


@app.command(
    cls=ReadableCommand,
    short_help="Compare the maps of two runs (did the model change its mind?): a CI gate.",
    epilog=examples_epilog("compare"),
)
def compare(
    base: Annotated[
        Path,
        typer.Argument(
            metavar="BASE",
            show_default=False,
            help="The --out folder of the run to compare with (made with --save-raw).",
        ),
    ],
    new: Annotated[
        Path,
        typer.Argument(
            metavar="NEW",
            show_default=False,
            help="The --out folder of the run compared (made with --save-raw).",
        ),
    ],
    min_corr: MinCorrOpt = None,
    max_shift: MaxShiftOpt = None,
    max_energy_moved: MaxEnergyMovedOpt = None,
    max_top1_changes: MaxTop1ChangesOpt = None,
    allow_method_change: Annotated[
        bool,
        typer.Option(
            "--allow-method-change",
            help="Compare runs of different methods, method options or layers (how two "
            "methods agree on one model), instead of refusing them.",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Where comparison.json (and the page) go. Default: NEW.",
            file_okay=False,
        ),
    ] = None,
    report_page: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Also write OUT/comparison.html: base | new | difference for each pair, worst "
            "first, filtered by gate result.",
        ),
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Also print comparison.json to stdout (stdout then carries nothing else).",
        ),
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Pair the explanations of two runs by input, layer and target class, and measure how the
    maps moved: Pearson and Spearman correlation, the peak's shift on the photo, the energy
    that moved; and the top-1 and probability changes. Writes OUT/comparison.json, one stderr
    line per pair that fails a gate. No model is loaded.

    Exit 0 when every gate passes (or none is set), 1 when a pair fails one (or an input
    explained in BASE failed in NEW), 2 when the runs cannot be compared (another report
    schema, no raw maps, no input in common, different methods or layers).
    """
    with _exit_codes(verbose), data_stdout() as stdout:
        from .compare import CompareGates

        gates = CompareGates(min_corr, max_shift, max_energy_moved, max_top1_changes)
        comparison, paths = _compare(
            base, new, out or new, gates, page=report_page, allow_method_change=allow_method_change
        )
        if json_out:
            stdout.write(paths["comparison"].read_text(encoding="utf-8"))
    raise typer.Exit(EXIT_OK if comparison.passed else EXIT_SOME_FAILED)


@app.command(
    cls=ReadableCommand,
    short_help="Deep Feature Factorization: the concepts a layer has learnt, and their classes.",
    epilog=examples_epilog("concepts"),
)
def concepts(
    inputs: InputsArg,
    model: ModelOpt,
    k: Annotated[
        int,
        typer.Option("--k", "-k", metavar="N", help="Concepts to factor the layer into."),
    ] = 5,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "-l",
            metavar="LAYER",
            help="Layer to factor, one (default: the last spatial layer the logits depend on).",
        ),
    ] = None,
    top_classes: Annotated[
        int,
        typer.Option(
            "--top-classes", metavar="N", help="Classes each concept votes for, shown and kept."
        ),
    ] = 2,
    seed: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Seed of the factorization's start (and of the positions sampled on large runs).",
        ),
    ] = 0,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Output folder for each image's overlay, each concept's figure and "
            "concepts.json; one run at a time (a lock).",
        ),
    ] = Path("gradcam_concepts"),
    save_raw: Annotated[
        bool,
        typer.Option(
            "--save-raw", help="Also write each image's concept maps [k, h, w] as float32 .npy."
        ),
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="Also print concepts.json to stdout (stdout then carries nothing else)."
        ),
    ] = False,
    pretrained: PretrainedOpt = True,
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    labels: LabelsOpt = None,
    input_size: InputSizeOpt = None,
    resize: Annotated[
        str | None,
        typer.Option(
            "--resize",
            metavar="MODE",
            help="How the photo is fitted to the model's input: crop, squash or pad, as for "
            "explain. Default: the model's own convention.",
        ),
    ] = None,
    batch_size: Annotated[
        str,
        typer.Option(
            "--batch-size",
            "-b",
            metavar="N|auto",
            help="Images per forward pass (auto: sized as for explain).",
        ),
    ] = "auto",
    device: DeviceOpt = "auto",
    verbose: VerboseOpt = False,
) -> None:
    """Deep Feature Factorization (Collins et al. 2018): factor the layer's activations over
    all the images into k non-negative concepts, each with the classes the model's head gives
    it. Writes each image's concept overlay, each concept's figure of the images where it is
    strongest, and OUT/concepts.json.

    Exit 0 when every input was read, 1 when some could not be (the others are factored), 2 on
    a usage error.
    """
    with _exit_codes(verbose), stop_signals(), data_stdout() as stdout:
        if progress.on_terminal():
            _log(f"loading {model}…")
        from .concepts import run_concepts

        with _counted_progress() as show:
            result, paths = run_concepts(
                inputs,
                model,
                out=out,
                save_raw=save_raw,
                pretrained=pretrained,
                weights=weights,
                num_classes=num_classes,
                labels_file=labels,
                input_size=input_size,
                resize=resize,
                stdin=sys.stdin,
                on_note=_note,
                k=k,
                layer=layer,
                top_classes=top_classes,
                seed=seed,
                batch_size=batch_size,
                device=device,
                progress=show,
            )
        for source, why in result.skipped:
            _log(f"{source}: {why}")
        _log(
            f"{len(result.images)} overlay(s), {len(result.concepts)} concept figure(s) and "
            f"concepts.json in {out}"
        )
        if json_out:
            stdout.write(paths["json"].read_text(encoding="utf-8"))
        for concept in result.concepts:
            votes = ", ".join(f"{v.label} {v.probability:.2f}" for v in concept.votes)
            _log(f"concept {concept.number}: {votes}")
    raise typer.Exit(EXIT_SOME_FAILED if result.skipped else EXIT_OK)


@contextlib.contextmanager
def _counted_progress() -> Iterator[Callable[[int, int], None]]:
    """`show(done, total)` for a run that counts its images first: a progress bar from the
    first call on (on a terminal; progress.ProgressBar draws nothing elsewhere)."""
    import time

    from .timing import RunStatus

    with contextlib.ExitStack() as bars:
        bar, started = None, time.monotonic()

        def show(done: int, total: int) -> None:
            nonlocal bar
            bar = bar or bars.enter_context(progress.ProgressBar(total))
            bar.update(RunStatus(done, total, 0, 0, time.monotonic() - started))

        yield show


def _compare(base: Path, new: Path, out: Path, gates, *, page: bool, allow_method_change=False):
    """Compare run NEW with run BASE, write OUT/comparison.json (and the page) under OUT's
    lock, and tell stderr; the comparison and the files written."""
    from dataclasses import asdict

    from .compare import compare_runs, save_comparison
    from .files import check_writable_dir
    from .outlock import output_lock

    check_writable_dir(out)  # before any work: a read-only NEW asks for --out
    comparison = compare_runs(base, new, allow_method_change=allow_method_change, **asdict(gates))
    with output_lock(out):
        paths = save_comparison(comparison, out, page=page)
    for line in comparison.log_lines():
        _note(line)
    _log("; ".join(f"{kind}: {path}" for kind, path in paths.items()))
    _log(f"compare: {comparison.verdict()}")
    return comparison, paths


def _compare_after_run(baseline: Path, out: Path, gates, *, page: bool) -> int:
    """`explain --baseline`: compare the run just written with its baseline; the exit code. A
    refusal now (no input in common, say) is exit 1, not 2: images were processed."""
    try:
        comparison, _ = _compare(baseline, out, out, gates, page=page)
    except GradcamError as exc:
        _log(f"error: cannot compare with --baseline {baseline}: {as_cli_flags(str(exc))}")
        return EXIT_SOME_FAILED
    return EXIT_OK if comparison.passed else EXIT_SOME_FAILED


def main() -> None:
    """Console-script entry point."""
    global _invocation
    _invocation = sys.argv[1:]
    try:
        app()
    except KeyboardInterrupt as exc:
        code: str | int | None = StopState().exit_code(exc)
    except SystemExit as exc:
        code = exc.code
    else:
        code = EXIT_OK
    if signal_received():
        # Stopped by a signal, report written: leave now. A decode thread or a writer may
        # still sit in a system call (a hung network file system); joining it at exit, as
        # Python does for pool threads, could wait for ever.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code if isinstance(code, int) else EXIT_SOME_FAILED)
    # Everything is written: spare the interpreter's last collections a walk over the millions
    # of objects torch and its libraries made (about 1 s of a one-photo run's exit).
    gc.freeze()
    sys.exit(code)


__all__ = [
    "app",
    "main",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
]
