"""The pages (`gradcam_cli.pages`): the run's page of --report and `gradcam report OUT` (its
structure, links, escaping, regeneration without torch, exit codes, atomic writing), and the
skeleton and assets every page is made of. The comparison and sanity pages are checked with
their commands (test_compare.py, test_sanity.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from helpers import HOSTILE_NAME, HOSTILE_STEM, one_explanation_report
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli import files
from gradcam_cli.cli import app
from gradcam_cli.pages import document
from gradcam_cli.pages.document import asset, page_document
from gradcam_cli.pages.run import write_page
from gradcam_cli.pages.thumbnails import THUMBNAIL_SIZE, thumbnail_path

SCENES = Path(__file__).parents[1] / "sample_images" / "scenes"


VOID = {"img", "wbr", "br", "meta", "link", "input", "hr"}  # elements with no end tag


class Page(HTMLParser):
    """The parts of index.html the tests look at."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.cards: list[dict] = []  # the card's attributes, plus its 'name' (the h2 text)
        self.error_rows: list[list[str]] = []
        self.selects: dict[str, list[str]] = {}
        self._where: list[tuple[str, dict]] = []  # the open elements
        self._select: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag not in VOID:
            self._where.append((tag, attrs))
        if tag == "article" and "card" in attrs.get("class", "").split():
            self.cards.append({**attrs, "name": ""})
        elif tag == "select":
            self._select = attrs["name"]
            self.selects[self._select] = []
        elif tag == "option" and self._select:
            self.selects[self._select].append(attrs["value"])
        elif tag == "h2" and self._inside("article"):
            self.cards[-1]["title"] = attrs.get("title")
        elif tag == "tr" and self._inside("tbody") and self._inside_errors():
            self.error_rows.append([])
        elif tag == "td" and self._inside_errors():
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        if tag == "td" and self._cell is not None:
            self.error_rows[-1].append("".join(self._cell))
            self._cell = None
        open_tags = [name for name, _ in self._where]
        if tag in open_tags:
            del self._where[len(open_tags) - 1 - open_tags[::-1].index(tag) :]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        open_tags = [name for name, _ in self._where]
        if open_tags and open_tags[-1] == "h2" and "article" in open_tags:
            self.cards[-1]["name"] += data

    def _inside(self, tag: str) -> bool:
        return any(name == tag for name, _ in self._where[:-1])

    def _inside_errors(self) -> bool:
        return any(attrs.get("id") == "errors" for _, attrs in self._where)

    def links(self) -> list[str]:
        return [
            attrs[key]
            for _, attrs in self.tags
            for key in ("href", "src", "data-panel")
            if attrs.get(key)
        ]


def read_page(out: Path) -> tuple[str, Page]:
    text = (out / "index.html").read_text(encoding="utf-8")
    return text, Page(text)


def report_of(out: Path) -> dict:
    return json.loads((out / "predictions.json").read_text(encoding="utf-8"))


def assert_every_link_is_a_file_inside(out: Path, page: Page) -> list[Path]:
    found = []
    for link in page.links():
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc and not link.startswith("/"), link
        assert not parts.query and not parts.fragment, f"unencoded ? or # in {link!r}"
        path = (out / unquote(link)).resolve()
        assert path.is_relative_to(out.resolve()) and path.is_file(), link
        found.append(path)
    return found


# -- the page written by `explain --report` --------------------------------------------------


def test_one_card_per_explanation_and_per_failed_input_with_its_status(demo_run):
    out, result = demo_run
    assert result.exit_code == 1  # one unreadable input, two gate failures
    report = report_of(out)
    assert report["options"]["report"] is True
    _, page = read_page(out)
    expected = []
    for r in report["results"]:
        if r["status"] != "ok":
            expected.append((r["input"], "error", ""))
        for e in r["explanations"]:
            status = "ok" if e["localization"]["passed"] else "gate-failed"
            expected.append((r["input"], status, e["target"]["label"]))
    assert [(c["name"], c["data-status"], c["data-target"]) for c in page.cards] == expected
    statuses = [c["data-status"] for c in page.cards]
    assert statuses.count("ok") == 3 and statuses.count("gate-failed") == 2
    assert statuses.count("error") == 1
    [failed] = [r for r in report["results"] if r["status"] == "error"]
    assert page.error_rows == [[failed["input"], failed["error"]]]


def test_filters_offer_each_class_and_status_and_wait_for_the_script(demo_run):
    out, _ = demo_run
    _, page = read_page(out)
    [nav] = [attrs for tag, attrs in page.tags if attrs.get("id") == "filters"]
    assert "hidden" in nav  # useless without JS: the script reveals them
    targets = sorted({c["data-target"] for c in page.cards if c["data-target"]})
    predicted = sorted({c["data-predicted"] for c in page.cards if c["data-predicted"]})
    assert page.selects == {
        "predicted": ["", *predicted],
        "target": ["", *targets],
        "status": ["", "ok", "error", "gate-failed"],
    }


def test_every_link_resolves_to_a_written_file_and_every_artifact_is_linked(demo_run):
    out, _ = demo_run
    _, page = read_page(out)
    linked = set(assert_every_link_is_a_file_inside(out, page))
    report = report_of(out)
    artifacts = {
        (out / e[key]).resolve()
        for r in report["results"]
        for e in r["explanations"]
        for key in ("overlay", "heatmap", "panel", "mask")
        if e[key]  # the mask with one to measure against only
    }
    thumbnails = {(out / thumbnail_path(p.name)).resolve() for p in out.glob("*.overlay.png")}
    assert artifacts | thumbnails | {(out / "predictions.json").resolve()} == linked
    images = [attrs for tag, attrs in page.tags if tag == "img" and attrs.get("src")]
    assert len(images) == len(thumbnails) == 5
    for attrs in images:
        with Image.open(out / unquote(attrs["src"])) as thumb:
            assert max(thumb.size) <= THUMBNAIL_SIZE and thumb.format == "JPEG"
            assert (int(attrs["width"]), int(attrs["height"])) == thumb.size


def test_page_is_self_contained(demo_run):
    out, _ = demo_run
    text, page = read_page(out)
    tags = [tag for tag, _ in page.tags]
    assert tags.count("style") == 1 and tags.count("script") == 1 and "link" not in tags
    assert not any("src" in attrs for tag, attrs in page.tags if tag == "script")
    assert "://" not in text  # no URL of any scheme: nothing is fetched from elsewhere


def test_hostile_input_names_are_text_never_markup(demo_run):
    out, _ = demo_run
    text, page = read_page(out)
    assert "<img src=x" not in text and "<b>" not in text
    assert not any("onerror" in attrs for _, attrs in page.tags)
    sources = [attrs.get("src") for tag, attrs in page.tags if tag == "img"]
    assert len([s for s in sources if s]) == 5  # the thumbnails; the viewer's two are empty
    assert len(sources) == 7
    names = [c["name"] for c in page.cards]
    assert any(name.endswith("/" + HOSTILE_NAME) for name in names)
    assert any(name.endswith("/broken & <b>.png") for name in names)
    [hostile] = [c for c in page.cards if c["name"].endswith(HOSTILE_NAME)]
    assert hostile["title"] == hostile["name"]


def test_hostile_artifact_paths_are_percent_encoded_and_outside_paths_never_linked(tmp_path):
    out = tmp_path / "out"
    stem = f"{HOSTILE_STEM}.281-cat.layer4"
    for suffix in (".overlay.png", ".panel.png", ".heatmap.png"):
        path = out / f"{stem}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (640, 480), (10, 120, 200)).save(path)
    (tmp_path / "outside.png").write_bytes(b"x")
    document = one_explanation_report(
        281,
        "cat",
        "layer4",
        overlay=f"{stem}.overlay.png",
        heatmap=f"{stem}.heatmap.png",
        panel=f"{stem}.panel.png",
        guided="../outside.png",
        raw="/etc/hostname",
    )
    write_page(out, document)
    text, page = read_page(out)
    linked = assert_every_link_is_a_file_inside(out, page)
    names = {p.name for p in linked}
    leaf = stem.split("/")[-1]
    assert {f"{leaf}.overlay.png", f"{leaf}.thumb.jpg", f"{leaf}.panel.png"} <= names
    assert "outside" not in text and "/etc/hostname" not in text
    for link in page.links():
        assert not set(link) & set(" #?\"'<>&"), link  # percent-encoded, so one path each
    with Image.open(out / f"{stem}.thumb.jpg") as thumb:  # made from the overlay on disk
        assert thumb.size == (256, 192)


# -- `gradcam report OUT` --------------------------------------------------------------------


def run_report_in_a_fresh_python(out: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    code = (
        "import sys\n"
        "from gradcam_cli.cli import app\n"
        "try:\n"
        "    app(['report', sys.argv[1]])\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
        "print('imported', *sorted({'torch', 'matplotlib', 'torchvision'} & set(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120
    )
    return proc, proc.stdout.split("\n")


def test_report_command_rebuilds_the_same_page_and_the_thumbnails_without_torch(demo_run, tmp_path):
    original, _ = demo_run
    out = tmp_path / "copy"
    shutil.copytree(original, out)
    (out / "index.html").unlink()
    thumbnails = sorted(out.glob("*.thumb.jpg"))
    for thumb in thumbnails:
        thumb.unlink()
    proc, lines = run_report_in_a_fresh_python(out)
    assert lines[:2] == ["exit 0", "imported"], proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"gradcam: page: {out / 'index.html'}"
    assert sorted(out.glob("*.thumb.jpg")) == thumbnails
    assert (out / "index.html").read_text() == (original / "index.html").read_text()


def test_report_command_remakes_a_thumbnail_older_than_its_overlay(demo_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(demo_run[0], out)
    overlay = sorted(out.glob("*.overlay.png"))[0]
    Image.new("RGB", (128, 128), (0, 255, 0)).save(overlay)  # a later run rewrote it
    thumb = out / thumbnail_path(overlay.name)
    os.utime(thumb, ns=(overlay.stat().st_mtime_ns - 10**9,) * 2)
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(thumb) as remade:
        assert remade.convert("RGB").getpixel((64, 64))[1] > 240


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda out: None, "no predictions.json in"),
        (lambda out: (out / "predictions.json").write_text("{not json"), "cannot read"),
        (lambda out: (out / "predictions.json").write_text("[1, 2]"), "not a gradcam report"),
        (lambda out: (out / "predictions.1-of-2.json").write_text("{}"), "gradcam merge"),
        (lambda out: shutil.rmtree(out), "is not a folder"),
    ],
)
def test_report_command_exits_2_with_one_line_without_a_readable_report(tmp_path, setup, expected):
    out = tmp_path / "out"
    out.mkdir()
    setup(out)
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradcam: error: ") and expected in lines[0]
    assert not (out / "index.html").exists()


def test_page_is_written_atomically(demo_run, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(demo_run[0], out)
    (out / "index.html").write_text("the previous page")

    def no_rename(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", no_rename)
    with pytest.raises(OSError):
        write_page(out, report_of(out))
    assert (out / "index.html").read_text() == "the previous page"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_shards_write_thumbnails_and_the_merged_report_gets_the_page(tmp_path):
    out = tmp_path / "out"
    runner = CliRunner()
    for share in ("1/2", "2/2"):
        result = runner.invoke(
            app,
            ["explain", str(SCENES), "--model", "demo:shapes", "--report", "--shard", share]
            + ["--out", str(out)],
        )
        assert result.exit_code == 0, result.output
        assert "gradcam merge" in result.stderr
        assert not (out / "index.html").exists()  # one share's page would show one share
    assert len(list(out.glob("*.thumb.jpg"))) == 6
    assert runner.invoke(app, ["merge", str(out)]).exit_code == 0
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    _, page = read_page(out)
    assert len(page.cards) == 6
    assert_every_link_is_a_file_inside(out, page)


# -- the skeleton and its assets (document.py) -----------------------------------------------

ASSETS = Path(document.__file__).parent / "assets"
PAGES = Path(document.__file__).parent


def test_a_page_inlines_the_base_style_then_its_own_and_leaves_out_empty_parts():
    text = page_document(
        "a <b> & c", ['<p class="verdict">v</p>'], ["<main></main>", ""], styles=["sanity.css"]
    )
    page = Page(text)
    tags = [tag for tag, _ in page.tags]
    assert text.startswith("<!DOCTYPE html>\n") and text.endswith("</html>\n")
    assert text.count("<title>a &lt;b&gt; &amp; c</title>") == 1
    assert '<h1>a &lt;b&gt; &amp; c</h1>\n<p class="verdict">v</p>\n</header>' in text
    style = text.split("<style>")[1].split("</style>")[0]
    assert style == f"\n{asset('report.css')}{asset('sanity.css')}"
    assert "script" not in tags and "dialog" not in tags  # nothing to drive: no script
    assert "\n\n" not in text


def test_an_interactive_page_ends_with_the_viewer_and_the_script():
    text = page_document("t", [], ["<main></main>"], interactive=True)
    tail = text.split("<main></main>\n")[1]
    assert tail.startswith('<dialog id="viewer">')
    assert f"<script>\n{asset('report.js')}</script>\n</body>" in tail
    assert [tag for tag, _ in Page(text).tags].count("script") == 1


def test_every_asset_is_read_from_the_package_and_used_by_a_page():
    names = sorted(path.name for path in ASSETS.iterdir())
    assert names == ["comparison.css", "report.css", "report.js", "sanity.css", "viewer.html"]
    code = "".join(path.read_text(encoding="utf-8") for path in PAGES.glob("*.py"))
    for name in names:
        assert asset(name) == (ASSETS / name).read_text(encoding="utf-8")
        assert f'"{name}"' in code, f"{name} is shipped but no page uses it"


def test_the_script_sets_text_and_attributes_never_markup():
    script = asset("report.js")
    for writes_markup in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert writes_markup not in script
    assert "textContent" in script
