"""Model names: parsing a `--model` spec, `gradcam models PATTERN`, and what an unknown name
suggests (names close in spelling, names that contain the word, another library that has it).

Names are printed as `LIBRARY:NAME` (`timm:resnet50`), from the registered sources in listing
order; nothing here knows a library by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence

from ..errors import UnknownModelError, UsageError, did_you_mean
from .registry import Source, bare_sources, registered, source_named

__all__ = [
    "parse_model_spec",
    "find_source",
    "resolve_source",
    "list_model_names",
    "no_model_matches",
]

CONTAINING_SHOWN = 5  # names listed in an unknown model's error; `gradcam models` has them all


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split a `--model` value into (source, name); source is a registered library's prefix
    (timm, torchvision, demo), 'custom' (your own `file.py:Class`) or '' (no prefix)."""
    spec = spec.strip()
    if not spec:
        raise UsageError("model= is empty; give a name such as resnet50 or timm:convnext_tiny")
    prefix, sep, rest = spec.partition(":")
    if sep and source_named(prefix) is not None:
        return prefix, rest
    if sep:
        return "custom", spec
    return "", spec


def _asked(source: str) -> list[Source]:
    """Where a name is looked up: the library its prefix names, or without one, those that
    answer bare names (timm, then torchvision)."""
    if not source:
        return bare_sources()
    named = source_named(source)
    return [named] if named is not None else []


def resolve_source(source: str, name: str) -> str:
    """Which library builds `name`; raises UnknownModelError with a suggestion."""
    return find_source(source, name).prefix


def find_source(source: str, name: str) -> Source:
    """The library that builds `name` (`source`: its prefix, or '' for the first library that
    has it); raises UnknownModelError with a suggestion."""
    asked = _asked(source)
    for candidate in asked:
        if candidate.has(name):
            return candidate
    for candidate in asked:
        refusal = candidate.refusal(name)
        if refusal is not None:
            raise refusal
    where = source or " or ".join(bare.prefix for bare in bare_sources())
    raise UnknownModelError(
        f"unknown model '{name}': {where} has no model of that name."
        + _elsewhere(source, name)
        + _suggestion(source, name)
        + " List names with `gradcam models PATTERN`, or load your own with path/to/file.py:Class."
    )


def _elsewhere(source: str, name: str) -> str:
    """' timm has a model of that name: use timm:NAME.' when another library has it."""
    if source_named(source) is None:
        return ""
    for other in bare_sources():
        if other.prefix != source and other.has(name):
            return f" {other.prefix} has a model of that name: use {other.prefix}:{name}."
    return ""


def _suggestion(source: str, name: str) -> str:
    """' Did you mean ...?' with names of the library asked for (of every bare-name library
    when none was), never the rejected name itself (with a pretrained tag, its architecture
    may exist); then the models whose names contain the word (or match the pattern), as
    `gradcam models` lists them."""
    arch = name.split(".")[0]
    named = source_named(source)
    if named is not None:
        known = named.names()
    else:
        known = sorted({bare for library in bare_sources() for bare in library.names()})
    spelled = _close_names(arch, [known_name for known_name in known if known_name != arch])
    return did_you_mean(arch, spelled) + _containing(source, arch, spelled)


def _containing(source: str, word: str, spelled: Sequence[str]) -> str:
    """' Models containing 'vit': timm:vit_base_mci_224, … (N more: `gradcam models vit`).'
    The names the did-you-mean already gave are left out; in each library those that start
    with the word come first, then the shortest, and the libraries take turns (those that
    answer bare names first: timm, torchvision, then demo)."""
    import itertools
    import shlex

    if not word.strip():
        return ""
    is_pattern = any(char in word for char in "*?[")
    if not source:
        pattern, prefixes = word, None
    else:  # a word anywhere in the name, not only right after the prefix
        pattern = f"{source}:{word}" if is_pattern else f"{source}:*{word}*"
        prefixes = {source}
    found = _printed_names(_name_matcher(pattern), prefixes=prefixes)
    rest = [printed for printed in found if printed.partition(":")[2] not in spelled]
    if not rest:
        return ""
    folded = word.strip("*?").casefold()

    def rank(printed: str) -> tuple[bool, int, str]:
        bare = printed.partition(":")[2]
        return (not bare.casefold().startswith(folded), len(bare), bare)

    turn_order = sorted(registered(), key=lambda library: not library.bare)
    by_source = [
        sorted((printed for printed in rest if printed.startswith(f"{library.prefix}:")), key=rank)
        for library in turn_order
    ]
    turns = (names[i] for i in range(len(rest)) for names in by_source if i < len(names))
    shown = list(itertools.islice(turns, CONTAINING_SHOWN))
    more = len(rest) - len(shown)
    kind = "matching" if is_pattern else "containing"
    command = f"`gradcam models {shlex.quote(pattern)}`"
    tail = f" ({more} more: {command})" if more else ""
    return f" Models {kind} '{word}': {', '.join(shown)}{tail}."


# -- gradcam models PATTERN --------------------------------------------------------------------


def _name_matcher(pattern: str) -> Callable[[str], bool]:
    """`gradcam models PATTERN`'s test of one printed name (`timm:resnet50`): a bare word (no
    `*?[`) is a case-insensitive substring of it; a shell pattern matches all of it, prefix
    included (`timm:resnet5*`, `*demo*`), or the name after the prefix (`resnet5*`)."""
    import fnmatch

    if not any(char in pattern for char in "*?["):
        word = pattern.casefold()
        return lambda printed: word in printed.casefold()
    whole = re.compile(fnmatch.translate(pattern), re.IGNORECASE).match
    return lambda printed: bool(whole(printed) or whole(printed.partition(":")[2]))


def _printed_names(
    matches: Callable[[str], bool] | None = None,
    pretrained: bool = False,
    prefixes: Collection[str] | None = None,
    task: str | None = None,
) -> list[str]:
    """`LIBRARY:NAME` for every model `--model` accepts from the libraries `prefixes` names
    (all when None), of those `matches` keeps, doing `task` (any when None): the demo model,
    timm's, torchvision's, in that order."""
    keep = matches or (lambda printed: True)
    names: list[str] = []
    for library in registered():
        if prefixes is None or library.prefix in prefixes:
            bare = library.names(pretrained)
            if task is not None:
                bare = [name for name in bare if library.task(name) == task]
            printed = (f"{library.prefix}:{name}" for name in bare)
            names += [name for name in printed if keep(name)]
    return names


def list_model_names(
    pattern: str = "*", pretrained: bool = False, task: str | None = None
) -> list[str]:
    """`SOURCE:NAME` for every model `--model` accepts whose printed name matches `pattern`:
    the demo model, timm's, torchvision's. A bare word (no `*?[`) finds the names that contain
    it, in any case (`vit`, `timm:conv`); a shell pattern matches the names as printed
    (`timm:resnet5*`, `*demo*`) or without their prefix (`resnet5*`). `pretrained`: only those
    with pretrained weights, timm's with their tags (`timm:resnet50.a1_in1k`). `task`: only
    the classifiers, segmentation models or detectors."""
    return _printed_names(_name_matcher(pattern), pretrained, task=task)


def _close_names(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The `n` choices closest to `word` in spelling (what `did_you_mean` would name)."""
    import difflib

    return difflib.get_close_matches(word, list(dict.fromkeys(choices)), n=n, cutoff=0.6)


def _spelling_choices(printed: Sequence[str], prefixed: bool) -> list[str]:
    """What a misspelt model name is compared with: the printed names when it has a prefix;
    else the bare names, their architectures (without a pretrained tag) and their families
    (`vit`, `convnext`, `efficientnet`: a word `gradcam models` finds)."""
    if prefixed:
        return list(printed)
    bare = [name.partition(":")[2] for name in printed]
    archs = [name.split(".")[0] for name in bare]
    families = [arch.split("_")[0] for arch in archs if "_" in arch]
    return [*bare, *archs, *families]


def no_model_matches(pattern: str, pretrained: bool = False) -> UnknownModelError:
    """The error for a `gradcam models` pattern that matches nothing: the names close to it in
    spelling, and how a word and a pattern match."""
    chunks = [chunk for chunk in re.split(r"[*?]|\[[^\]]*\]?", pattern) if chunk]
    word = max(chunks, key=len, default=pattern).casefold()
    printed = _printed_names(pretrained=pretrained)
    spelled = _close_names(word, _spelling_choices(printed, ":" in word))
    return UnknownModelError(
        f"no model name matches '{pattern}'."
        + _untrained_matches(pattern, pretrained)
        + did_you_mean(word, spelled)
        + " A word lists the names that contain it ('vit', 'timm:conv'); a shell pattern "
        "matches whole names, with or without their library ('resnet5*', 'timm:*vit*small*')"
    )


def _untrained_matches(pattern: str, pretrained: bool) -> str:
    """' 2 model names without pretrained weights match: drop --pretrained to list them.'"""
    without = len(list_model_names(pattern)) if pretrained else 0
    if not without:
        return ""
    many = without > 1
    return (
        f" {without} model name{'s' if many else ''} without pretrained weights "
        f"match{'' if many else 'es'}: drop --pretrained to list {'them' if many else 'it'}."
    )
