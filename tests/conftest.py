"""Shared fixtures: small seeded models and images, a demo run, a headless browser; nothing
here touches the network. Plain helpers live in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import HOSTILE_NAME, gap_linear_net

# Tests must never download: make any accidental hub access fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch-home-unused"))


@pytest.fixture
def gap_linear_model():
    """conv backbone → global average pool → linear: the CAM architecture."""
    return gap_linear_net()


@pytest.fixture
def rgb_image():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`gradcam explain --panel --report` once for the session, over inputs that give every kind
    of card: explained and passing the gate, failing it (a mask in a corner; a hostile name
    with no mask), and unreadable. Tests that change OUT must copy it first."""
    import shutil
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from gradcam_cli.cli import app

    samples = Path(__file__).parents[1] / "sample_images"
    root = tmp_path_factory.mktemp("demo_run")
    inputs, masks = root / "scenes", root / "masks"
    inputs.mkdir()
    masks.mkdir()
    for name in ("circle", "star", "two_circle_star"):
        shutil.copy(samples / "scenes" / f"{name}.png", inputs / f"{name}.png")
    for mask in (samples / "masks").glob("*.png"):
        if mask.name.split(".")[0] in ("circle", "star", "two_circle_star"):
            shutil.copy(mask, masks / mask.name)
    shutil.copy(samples / "scenes" / "triangle.png", inputs / "off mask.png")
    corner = np.zeros((128, 128), dtype=np.uint8)
    corner[:4, :4] = 255  # the map's peak is not in this corner: the gate fails
    Image.fromarray(corner).save(masks / "off_mask.png")
    shutil.copy(samples / "scenes" / "square.png", inputs / HOSTILE_NAME)
    (inputs / "broken & <b>.png").write_text("not an image")
    out = root / "out"
    result = CliRunner().invoke(
        app,
        [
            "explain",
            str(inputs),
            "--model",
            "demo:shapes",
            "--mask",
            str(masks),
            "--require-hit",
            "--panel",
            "--report",
            "--out",
            str(out),
        ],
    )
    return out, result


# The report pages in a real browser (test_browser, test_compare): Debian's packages.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"headless Chromium is needed for this test, and {', '.join(missing)} is missing: "
            "install the Debian packages chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run does it)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # so that Selenium Manager never downloads one
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
