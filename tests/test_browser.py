"""The report page in a real browser: headless Chromium opens OUT/index.html from disk (file://),
every image loads, the filters hide and show cards, the viewer opens the overlay and the panel.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). When they are missing
this test fails, on purpose: a skipped browser test would pass CI without checking anything.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import HOSTILE_NAME, HOSTILE_STEM, loaded_images, one_explanation_report, open_page
from PIL import Image

from gradcam_cli.pages.run import write_page


def visible_statuses(driver) -> list[str]:
    return [
        card.get_attribute("data-status")
        for card in driver.find_elements("css selector", "#grid .card")
        if card.is_displayed()
    ]


def choose(driver, name: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("css selector", f"select[name='{name}']")).select_by_value(value)


def test_report_page_in_headless_chromium(browser, demo_run, tmp_path):
    out, _ = demo_run
    open_page(browser, out / "index.html")
    thumbnails = loaded_images(browser, "#grid img")
    assert len(thumbnails) == 5
    assert all(width > 0 for _, width in thumbnails), thumbnails
    screenshot = tmp_path / "report.png"
    assert browser.save_screenshot(str(screenshot))
    print(f"screenshot of the report page: {screenshot}")

    # The script revealed the filters; each one hides and shows cards.
    assert browser.find_element("id", "filters").is_displayed()
    everything = visible_statuses(browser)
    assert sorted(everything) == ["error", "gate-failed", "gate-failed", "ok", "ok", "ok"]
    choose(browser, "status", "error")
    assert visible_statuses(browser) == ["error"]
    assert browser.find_element("id", "shown").text == "1 of 6 shown"
    choose(browser, "status", "gate-failed")
    assert visible_statuses(browser) == ["gate-failed", "gate-failed"]
    choose(browser, "status", "")
    assert visible_statuses(browser) == everything
    choose(browser, "target", "star")
    targets = [
        c.get_attribute("data-target")
        for c in browser.find_elements("css selector", "#grid .card")
        if c.is_displayed()
    ]
    assert targets and set(targets) == {"star"} and len(targets) < len(everything)
    choose(browser, "target", "")

    # A hostile file name is shown as text: no element came out of it.
    names = [h.text for h in browser.find_elements("css selector", "#grid .card h2")]
    assert any(name.replace("\n", "").endswith(HOSTILE_NAME) for name in names), names
    assert not browser.find_elements("css selector", "[onerror]")

    # Clicking a thumbnail opens the full-size overlay and the panel.
    browser.find_element("css selector", "#grid a.open").click()
    viewer = browser.find_element("id", "viewer")
    assert viewer.get_property("open")
    shown = loaded_images(browser, "#viewer img")
    assert len(shown) == 2 and all(width > 0 for _, width in shown), shown
    assert shown[0][0].endswith(".overlay.png") and shown[1][0].endswith(".panel.png")
    with Image.open(out / Path(shown[1][0]).name) as panel:
        assert shown[1][1] == panel.width  # the panel itself, at full size
    browser.save_screenshot(str(tmp_path / "viewer.png"))
    print(f"screenshot of the viewer: {tmp_path / 'viewer.png'}")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_links_with_hostile_characters_load_from_file_urls(browser, demo_run, tmp_path):
    out = tmp_path / "out"
    stem = f"{HOSTILE_STEM}.0-circle.features"
    original = sorted(demo_run[0].glob("*.overlay.png"))[0]
    (out / "sub dir").mkdir(parents=True)
    shutil.copy(original, out / f"{stem}.overlay.png")
    shutil.copy(str(original).replace(".overlay.", ".panel."), out / f"{stem}.panel.png")
    document = one_explanation_report(
        0, "circle", "features", overlay=f"{stem}.overlay.png", panel=f"{stem}.panel.png"
    )
    write_page(out, document)
    open_page(browser, out / "index.html")
    [(source, width)] = loaded_images(browser, "#grid img")
    assert width > 0, source
    browser.find_element("css selector", "#grid a.open").click()
    shown = loaded_images(browser, "#viewer img")
    assert all(width > 0 for _, width in shown), shown
