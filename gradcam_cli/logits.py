"""What the model returned: its logits, whatever form they come in, and the class scores and
probabilities read from them.

A model may return a tensor, an object with `.logits` (Hugging Face), a dict or a tuple; a
1×1 conv head gives [B, C, 1, 1]. `extract_logits` finds the [B, num_classes] logits in all of
these. A single-output model is read as two classes, negative and positive (article 004), and a
model that ends in a sigmoid/softmax (`layers.Probe.outputs_probabilities`) as probabilities.
"""

from __future__ import annotations

import torch

from .errors import LayerError

__all__ = ["extract_logits", "class_scores", "class_probabilities"]


def extract_logits(output: object) -> torch.Tensor:
    """The [B, num_classes] logits of a model output: a tensor, `.logits`, a dict or a tuple."""
    if isinstance(output, torch.Tensor):
        logits = output
    elif hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):
        logits = output.logits
    elif isinstance(output, dict) and output:
        logits = output.get("logits", next(iter(output.values())))
        return extract_logits(logits)
    elif isinstance(output, list | tuple) and output and _detections(output):
        raise LayerError(
            "the model returned detections (dicts of boxes, labels and scores), not class "
            "scores; explain a detector with task='detection'"
        )
    elif isinstance(output, list | tuple) and output:
        return extract_logits(output[0])
    else:
        raise LayerError(
            f"the model returned {type(output).__name__}, not logits; "
            "wrap it so that forward returns a [batch, classes] tensor"
        )
    if logits.dim() > 2 and all(size == 1 for size in logits.shape[2:]):
        logits = logits.flatten(1)  # a 1×1 conv head: [B, C, 1, 1]
    if logits.dim() == 1:
        logits = logits.unsqueeze(1)  # one logit per image
    if logits.dim() == 4:
        raise LayerError(
            f"the model's output has shape {list(logits.shape)}: per-pixel scores, not "
            "[batch, classes]; explain a segmentation model with task='segmentation'"
        )
    if logits.dim() != 2:
        raise LayerError(
            f"the model's output has shape {list(logits.shape)}, not "
            "[batch, classes]; gradcam explains image classifiers"
        )
    return logits


def class_scores(outputs: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """Per-class scores. A single-output model gets two classes, negative and positive:
    [-z, z] for a logit z (article 004), [1 - p, p] for a model that ends in a sigmoid."""
    if outputs.shape[1] != 1:
        return outputs
    negative = 1 - outputs if probabilities else -outputs
    return torch.cat([negative, outputs], dim=1)


def class_probabilities(outputs: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """Softmax over logits; sigmoid of a single logit (not softmax(2z)); probabilities as is."""
    scores = class_scores(outputs, probabilities)
    if probabilities:
        return scores
    return torch.sigmoid(scores) if outputs.shape[1] == 1 else scores.softmax(dim=1)


def _detections(output: list | tuple) -> bool:
    return all(isinstance(d, dict) and {"boxes", "scores"} <= d.keys() for d in output)
