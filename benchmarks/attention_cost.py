"""What the transformer methods cost next to Grad-CAM and plain inference, on a ViT on the CPU.

    python benchmarks/attention_cost.py [--model vit_small_patch16_224] [--batch 8] [--threads 1]

timm's model with random weights (the cost does not depend on them), a batch of 224² images,
the last block's `norm1`; each method run once to warm up, then the median of 5 calls, as a
multiple of inference (`torch.no_grad()` forward, fused attention as timm has it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from gradcam_cli.engine import explain_batch
from gradcam_cli.layers import resolve_layer

METHODS = ("gradcam", "rollout", "transformer-attribution", "legrad")


def seconds(call, repeats: int = 5) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    images = torch.randn(args.batch, 3, 224, 224)
    layer = resolve_layer(model, "blocks.-1.norm1")

    def inference() -> None:
        with torch.no_grad():
            model(images)

    base = seconds(inference)
    threads = torch.get_num_threads()
    print(f"| {args.model}, batch {args.batch}, {threads} thread(s) | ms/image | × inference |")
    print("|---|---:|---:|")
    print(f"| inference | {1000 * base / args.batch:.1f} | 1.00 |")
    for method in METHODS:
        spent = seconds(lambda m=method: explain_batch(model, images, [layer], method=m))
        print(f"| {method} | {1000 * spent / args.batch:.1f} | {spent / base:.2f} |")


if __name__ == "__main__":
    main()
