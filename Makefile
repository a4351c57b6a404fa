# gradcam-cli developer tasks. `make help` lists them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# The torch pair the project is tested with; override for another build, e.g.
#   make install TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.DEFAULT_GOAL := help
.PHONY: help install test lint docs demo demo-model demo-eval seg-demo vit-demo bench-tasks bench-methods clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/.installed  ## create .venv and install gradcam-cli with its test tools

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e '.[dev]'
	@touch $@

test: install  ## run the test suite (offline, CPU)
	$(BIN)/python -m pytest

lint: install  ## ruff check, ruff format --check and mypy
	$(BIN)/ruff check gradcam_cli tests docs/hooks
	$(BIN)/ruff format --check gradcam_cli tests docs/hooks
	$(BIN)/mypy gradcam_cli

docs: install  ## build the documentation into site/; a broken link or anchor fails (--strict)
	$(BIN)/mkdocs build --strict --site-dir site

demo: install  ## explain the sample scenes offline with the demo model; results in demo_out/
	$(BIN)/gradcam explain sample_images/scenes --model demo:shapes \
		--mask sample_images/masks --require-hit --panel --report --out demo_out
	@echo "open demo_out/index.html (overlays, panels, heatmaps, predictions.json)"

demo-model: install  ## retrain the demo model (about 5 min on 2 cores), redraw the sample scenes
	$(BIN)/python -m gradcam_cli.demo.train
	$(BIN)/python -m gradcam_cli.demo.samples sample_images

demo-eval: install  ## the demo model's accuracy and localization on 300 held-out scenes
	$(BIN)/python benchmarks/demo_eval.py --single 200 --pairs 100

seg-demo: install  ## train a segmentation model on the demo scenes (~5 min) and explain held-out ones
	$(BIN)/python benchmarks/seg_demo.py --single 200 --pairs 100 --out seg_demo_out
	@echo "weights, labels, example scene and the table (seg_demo.md) in seg_demo_out/"

vit-demo: install  ## train a small ViT on the demo scenes, compare the attention methods' pointing game
	$(BIN)/python benchmarks/vit_demo.py --single 200 --pairs 100 --out vit_demo_out
	@echo "weights, labels and the table (vit_demo.md) in vit_demo_out/"

bench-tasks: install  ## Grad-CAM's cost on deeplabv3 and Faster R-CNN, CPU (~4 min on 2 cores when idle)
	$(BIN)/python benchmarks/task_cost.py

bench-methods: install  ## every method's CPU time per image on resnet50 vs Grad-CAM (README's table; ~15 min)
	$(BIN)/python benchmarks/method_cost.py

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf demo_out seg_demo_out vit_demo_out gradcam_out site .pytest_cache .ruff_cache .mypy_cache
