"""How `gradcam ... --help` reads: argument names a person reads, and examples on every page.

Typer prints a required argument as `{INPUT}...` and its Python type beside it (`INPUT
<list[str]>`); here an argument is shown by its metavar alone (`IMAGE|DIR|GLOB|-...`), as
`ls --help` would. Each command's examples are a `\\b` paragraph of its epilog, so Click keeps
their lines as written. tests/test_help.py runs every example.

Only typer is imported here: `gradcam --help` stays fast.
"""

from __future__ import annotations

import textwrap

import typer._click._textwrap
from typer.core import TyperCommand

# Typer's Click wraps help text with textwrap, which breaks words at hyphens: `guided-` at the
# end of one line, `backprop` on the next. Method names, flags and file names are copied from
# --help as they read, so its lines break only at spaces: the wrapper splits words as textwrap
# does without break_on_hyphens.
typer._click._textwrap.TextWrapper.wordsep_re = textwrap.TextWrapper.wordsep_simple_re

__all__ = ["ReadableCommand", "EXAMPLES", "examples_epilog", "example_commands"]


class ReadableCommand(TyperCommand):
    """A Typer command whose help shows arguments by their metavar, without Python types."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_usage_name(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx, formatter) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((_listed_name(param), _without_type(record[1])))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _listed_name(param) -> str:
    name = param.metavar or param.name.upper()
    return name + ("..." if param.nargs != 1 else "")


def _usage_name(param) -> str:
    name = _listed_name(param)
    return name if param.required else f"[{name}]"


def _without_type(help_text: str) -> str:
    # Typer adds "[required]" to a required argument: the usage line says so already.
    return help_text.replace("  [required]", "").replace("[required]", "").rstrip()


# One entry per command: (command line, what it does). The lines are run by tests/test_help.py
# (offline: hub models get --no-pretrained there), so they must stay real commands.
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "gradcam": [
        ("gradcam explain photo.jpg -m resnet50", "explain the predicted class"),
        ("gradcam layers resnet50 --usable", "which layers can be explained?"),
        ("gradcam models vit", "model names containing 'vit'"),
    ],
    "explain": [
        ("gradcam explain photo.jpg -m resnet50", "the predicted class, layer chosen for you"),
        (
            "gradcam explain photo.jpg -m resnet50 -l layer3,layer4 -t 'tiger cat' --panel",
            "one class, two layers, a figure each",
        ),
        (
            "gradcam explain photos/ -m timm:resnet18 -k 3 --report -o runs/photos",
            "a folder, top 3 classes, a page",
        ),
        (
            "gradcam explain xrays/ -m my_models.py:XRayNet --weights xray.pt --resize squash",
            "your model and checkpoint",
        ),
        (
            "find photos -name '*.jpg' | gradcam explain - -m demo:shapes --json > preds.json",
            "paths on stdin, JSON on stdout",
        ),
    ],
    "layers": [
        ("gradcam layers resnet50 --usable", "the layers --layer can take"),
        ("gradcam layers timm:vit_small_patch16_224 --input-size 384", "token grids at 384"),
        ("gradcam layers my_models.py:XRayNet --weights xray.pt", "your model, your checkpoint"),
    ],
    "models": [
        ("gradcam models vit", "every name containing 'vit'"),
        ("gradcam models 'timm:resnet5*'", "a pattern over the names as printed"),
        ("gradcam models --pretrained 'convnext_t*'", "with their pretrained tags"),
    ],
    "merge": [
        ("gradcam explain photos/ -m demo:shapes --shard 1/2 -o runs/big", "share 1 of 2"),
        ("gradcam explain photos/ -m demo:shapes --shard 2/2 -o runs/big", "share 2 of 2"),
        ("gradcam merge runs/big", "one predictions.json"),
    ],
    "report": [
        ("gradcam report runs/photos", "rebuild runs/photos/index.html"),
    ],
    "sanity": [
        (
            "gradcam sanity photos/ -m demo:shapes",
            "Grad-CAM, the weights randomised from the logits down",
        ),
        (
            "gradcam sanity photos/ -m demo:shapes --mode independent --report -o runs/sanity",
            "each stage alone, and a page",
        ),
    ],
    "concepts": [
        (
            "gradcam concepts photos/ -m demo:shapes --k 4",
            "4 concepts over the photos, the classes each votes for",
        ),
        (
            "gradcam concepts photos/ -m demo:shapes --k 3 --top-classes 3 --save-raw -o runs/c",
            "three votes each, and the raw maps",
        ),
    ],
    "compare": [
        ("gradcam explain photos/ -m demo:shapes --save-raw -o runs/v1", "the run to keep"),
        (
            "gradcam explain photos/ -m demo:shapes --baseline runs/v1 --min-corr 0.8 -o runs/v2",
            "a new run, compared with it in one step",
        ),
        (
            "gradcam compare runs/v1 runs/v2 --min-corr 0.8 --max-top1-changes 2 --report",
            "the gate alone, and a page",
        ),
    ],
}


def examples_epilog(command: str) -> str:
    """The examples section of `command`'s help: each command under a comment that says what it
    does, the lines kept as written (Click's `\\b` paragraph)."""
    pairs = [f"\b\n# {what}\n{line}" for line, what in EXAMPLES[command]]
    return "\n\n".join(["Examples:", *pairs])


def example_commands(command: str) -> list[str]:
    return [line for line, _ in EXAMPLES[command]]
