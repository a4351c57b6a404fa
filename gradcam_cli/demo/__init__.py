"""The embedded demo: generated shape scenes with known masks, and a small CNN trained on them.

`demo:shapes` works offline like any other `--model` (`gradcam_cli.sources.demo` builds it);
`scenes` draws the pictures and masks, `model` is the network, `train` rebuilds the shipped
weights (`make demo-model`), `samples` redraws `sample_images/scenes` and `masks`. How well the
maps land on the objects is measured outside the package, by `benchmarks/demo_eval.py`
(`make demo-eval`): it explains with the library, which this folder does not import.
"""
