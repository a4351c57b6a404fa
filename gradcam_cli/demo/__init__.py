"""The embedded demo: generated shape scenes with known masks, and a small CNN trained on them.

`demo:shapes` works offline like any other `--model`; `scenes` draws the pictures and masks,
`model` is the network, `train` rebuilds the shipped weights (`make demo-model`), `evaluate`
measures how well the maps land on the objects (`make demo-eval`), `samples` redraws
`sample_images/scenes` and `masks`.
"""
