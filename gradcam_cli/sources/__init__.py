"""Where models come from: a `--model` spec → (model, preprocessing, labels, provenance).

Sources, chosen by the `--model` spec:

- `timm:NAME` (pretrained tags allowed: `timm:resnet50.a1_in1k`) and `torchvision:NAME`;
- a bare `NAME`: timm first (its registry is a superset of torchvision's architectures and
  knows pretrained tags), then torchvision; the JSON records which library it came from;
- `demo:shapes`: the small shape classifier shipped inside the package, weights included, for
  offline use (`gradcam_cli.demo`);
- `path/to/file.py:callable` or `package.module:callable`: the user's own model, built by
  calling `callable()` (with `num_classes=N` when `--num-classes` is given).

Pretrained weights are downloaded by default. `--weights FILE` loads a local state_dict instead,
only through `torch.load(weights_only=True)` or safetensors, so a checkpoint can never run code.

Modules: `registry` (the `Source` base class and `@register_source`), one module per library
(`demo`, `timm`, `torchvision`; adding a library is adding one such module and importing it
below), `user` (your own model), `names` (specs, listing, suggestions), `checkpoint` (weights
files), `options` (what `--input-size`, `--mean`, `--labels`... change) and `load` (the entry
point, `load_model`).
"""

from __future__ import annotations

# Importing a library's module registers its source; the registry orders them itself.
from . import demo as demo
from . import timm as timm
from . import torchvision as torchvision
from .checkpoint import load_weights, read_state_dict
from .load import LoadedModel, as_loaded_model, load_model
from .names import list_model_names, no_model_matches, parse_model_spec, resolve_source
from .options import check_input_size, check_num_classes, override_preprocess, read_labels_file
from .user import custom_preprocess

__all__ = [
    "LoadedModel",
    "load_model",
    "as_loaded_model",
    "check_input_size",
    "check_num_classes",
    "parse_model_spec",
    "resolve_source",
    "list_model_names",
    "no_model_matches",
    "read_state_dict",
    "load_weights",
    "read_labels_file",
    "custom_preprocess",
    "override_preprocess",
]
