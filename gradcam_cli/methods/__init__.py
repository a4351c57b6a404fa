"""CAM methods: each a few lines over what the engine hands it for one layer (a `LayerView`).

The registry is the one list of method names: the CLI's `--method` choices, its help text and the
method table in docs/methods.md all come from `METHODS`, in the order the family modules below
register them. No module here imports torch at module level, so `gradcam --help` can list the
methods without paying for torch.

Notation in the formulas: A is the target layer's output [B, C, h, w], y the target class's score
(the logit), g = ∂y/∂A (from the head only: see engine.py), Z = h·w.

Every map is combined over channels by a plain sum, or, for the eigen methods and with
`eigen_smooth`, by the first principal component; then a ReLU keeps the positive evidence.
"""

from __future__ import annotations

# The order the families register in is the order of `--method`'s choices and of the docs' table.
# isort: off
from . import gradient, eigen, activation, perturbation, guided_backprop  # noqa: F401
from . import comparative, second_order, multilayer, score_family, smooth  # noqa: F401
from . import fullgrad, sess  # noqa: F401
from . import attention  # noqa: F401
# isort: on

from .activation import seeded_uniform
from .base import (
    METHODS,
    CamMethod,
    LayerView,
    MethodOption,
    check_layer_count,
    check_method_options,
    cost_note,
    get_method,
    method_option_help,
    method_option_names,
    methods_table,
    readme_table,
    register_method,
)
from .projection import first_principal_component, kernel_principal_component

__all__ = [
    "CamMethod",
    "MethodOption",
    "LayerView",
    "METHODS",
    "register_method",
    "get_method",
    "check_layer_count",
    "check_method_options",
    "cost_note",
    "method_option_help",
    "method_option_names",
    "methods_table",
    "readme_table",
    "first_principal_component",
    "kernel_principal_component",
    "seeded_uniform",
]
