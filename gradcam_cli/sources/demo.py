"""The embedded demo: `demo:shapes`, the small shape classifier shipped inside the package with
its weights, for offline use (`gradcam_cli.demo`). It answers only its prefixed name: a bare
`shapes` is looked up in timm and torchvision, and the error points here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UsageError, WeightsError
from .checkpoint import load_weights, read_state_dict
from .registry import Source, register_source

if TYPE_CHECKING:
    from torch import nn

    from ..preprocess import Preprocess

__all__ = ["DemoSource"]


@register_source
class DemoSource(Source):
    prefix = "demo"
    order = 0
    classes_fixed = True

    def names(self, pretrained: bool = False) -> list[str]:
        return ["shapes"]  # trained and shipped with the package, so pretrained either way

    def build(
        self, name: str, *, pretrained: bool, num_classes: int | None, input_size: int | None
    ) -> tuple[nn.Module, str]:
        from ..demo.model import WEIGHTS_PATH, ShapesNet

        if num_classes is not None:
            raise UsageError("demo:shapes has 4 classes; num_classes= does not apply")
        model = ShapesNet()
        if not pretrained:
            return model, "random"
        if not WEIGHTS_PATH.is_file():  # a broken install, or a checkout before `make demo-model`
            raise WeightsError(
                f"the demo model's weights are missing ({WEIGHTS_PATH}); "
                "rebuild them with `make demo-model`, or reinstall gradcam-cli"
            )
        load_weights(model, read_state_dict(WEIGHTS_PATH), "demo:shapes")
        return model, f"embedded:{WEIGHTS_PATH.name}"

    def preprocess(self, model: nn.Module, name: str) -> Preprocess:
        from ..demo.model import PREPROCESS

        return PREPROCESS

    def labels(self, model: nn.Module, name: str) -> list[str] | None:
        from ..demo.model import LABELS

        return list(LABELS)
