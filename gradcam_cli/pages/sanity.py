"""The pictures of `gradcam sanity`: the figure (sanity.png) and the page (sanity.html).

The figure is drawn with Pillow, like the panels (no pyplot): the median of each measure per
stage, from the trained model on the left to the stem on the right, a band from the 5th to the
95th percentile over the images, the threshold, and the stage the pass rule looks at. The page
is self-contained like every page (`document`; the thumbnails as data: URLs, the figure linked
relatively): the table of the figures, the figure, and for each of the first images its map
before and after each randomisation.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..captions import without_accents
from ..render import colormap_lut
from ..sanityresult import SanityResult
from .document import errors_section, escaped, fixed, page_document, summary_list

__all__ = ["FIGURE_NAME", "PAGE_NAME", "draw_figure", "render_page"]

FIGURE_NAME = "sanity.png"
PAGE_NAME = "sanity.html"

SCALE = 2  # drawn at twice the size, then reduced: smooth lines without antialiasing support
WIDTH, PLOT_HEIGHT = 900, 340
BACKGROUND, INK, GRID = (255, 255, 255), (32, 32, 32), (225, 225, 225)
MEASURE_COLOURS = {"Spearman": (31, 119, 180), "SSIM": (255, 127, 14)}
THRESHOLD_COLOUR = (120, 120, 120)
BAND_ALPHA = 56
PASS_COLOUR, FAIL_COLOUR = (46, 125, 50), (198, 40, 40)


# -- the figure ----------------------------------------------------------------------------------


def draw_figure(result: SanityResult) -> Image.Image:
    """Correlation against stage, from the trained model through each randomised stage."""
    s = SCALE
    font, small = _font(15 * s), _font(12 * s)
    labels = ["original", *(stage.name for stage in result.stages)]
    label_room = max(font.getlength(label) for label in labels[:]) if labels else 0
    left, top, right = 64 * s, 84 * s, 230 * s
    bottom = int(min(label_room, 260 * s)) + 24 * s
    width, plot_h = WIDTH * s, PLOT_HEIGHT * s
    canvas = Image.new("RGB", (width, top + plot_h + bottom), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x0, x1, y0, y1 = left, width - right, top, top + plot_h
    low = _axis_low(result)

    def x_at(i: int) -> float:
        return x0 + (x1 - x0) * (i + 0.5) / len(labels)

    def y_at(v: float) -> float:
        return y1 - (y1 - y0) * (v - low) / (1.0 - low)

    _title(draw, result, font, small, left)
    _grid(draw, small, (x0, y0, x1, y1), low, y_at)
    _by_stage(draw, small, result, x_at(result.by_stage + 1), y0, y1)
    _threshold(draw, small, result.threshold, x0, x1, y_at)
    curves = {name: _points(result, name, x_at) for name in MEASURE_COLOURS}
    for name, points in curves.items():  # the bands first: every line stays on top
        bands = [(x, y_at(low_), y_at(high)) for x, _, low_, high in points]
        canvas = _band(canvas, bands, MEASURE_COLOURS[name])
    draw = ImageDraw.Draw(canvas)
    for name, points in curves.items():
        _line(draw, [(x, y_at(median)) for x, median, _, _ in points], MEASURE_COLOURS[name])
    draw.rectangle((x0, y0, x1, y1), outline=INK, width=s)
    for i, label in enumerate(labels):
        _verticaltext(canvas, without_accents(label), font, x_at(i), y1 + 8 * s)
    draw = ImageDraw.Draw(canvas)
    _legend(draw, small, result.mode, x1 + 18 * s, y0)
    return canvas.resize((canvas.width // s, canvas.height // s), Image.Resampling.LANCZOS)


def _points(result: SanityResult, measure: str, x_at) -> list[tuple[float, float, float, float]]:
    """(x, median, 5th, 95th percentile) per stage, after the trained model's own (1 = same)."""
    spreads = [row.spearman if measure == "Spearman" else row.ssim for row in result.summary]
    return [(x_at(0), 1.0, 1.0, 1.0)] + [
        (x_at(i + 1), spread.median, spread.p5, spread.p95)
        for i, spread in enumerate(spreads)
        if spread.median is not None and spread.p5 is not None and spread.p95 is not None
    ]


def _font(size: int):
    return ImageFont.load_default(size=size)


def _axis_low(result: SanityResult) -> float:
    """The bottom of the value axis: 0, or the lowest 5th percentile rounded down to 0.25."""
    lows = [
        value
        for row in result.summary
        for value in (row.spearman.p5, row.ssim.p5, result.threshold)
        if value is not None
    ]
    return min(0.0, np.floor(min(lows, default=0.0) * 4) / 4)


def _title(draw, result: SanityResult, font, small, left: int) -> None:
    s = SCALE
    name = result.model.get("name", "?")
    title = (
        f"gradcam sanity: {result.method} on {name} ({result.layer}), {result.mode} "
        f"randomisation, {len(result.images)} image(s)"
    )
    draw.text((left, 12 * s), without_accents(title), font=font, fill=INK)
    colour = PASS_COLOUR if result.passed else FAIL_COLOUR
    width = WIDTH * s - left - 16 * s
    for row, text in enumerate(_wrapped(without_accents(result.verdict()), small, width)[:2]):
        draw.text((left, (36 + 16 * row) * s), text, font=small, fill=colour)


def _wrapped(text: str, font, width: float) -> list[str]:
    """Words packed into lines no wider than `width` pixels."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _grid(draw, font, box, low: float, y_at) -> None:
    x0, y0, x1, y1 = box
    value = 1.0
    while value >= low - 1e-9:
        y = y_at(value)
        draw.line([(x0, y), (x1, y)], fill=GRID, width=SCALE)
        draw.text((x0 - 8 * SCALE, y), f"{value:g}", font=font, fill=INK, anchor="rm")
        value -= 0.25


def _threshold(draw, font, threshold: float, x0: float, x1: float, y_at) -> None:
    y = y_at(threshold)
    step = 12 * SCALE
    for start in np.arange(x0, x1, step):
        draw.line([(start, y), (min(start + step / 2, x1), y)], fill=THRESHOLD_COLOUR, width=SCALE)


def _by_stage(draw, font, result: SanityResult, x: float, y0: float, y1: float) -> None:
    draw.line([(x, y0), (x, y1)], fill=THRESHOLD_COLOUR, width=SCALE)
    draw.text((x + 4 * SCALE, y0 + 4 * SCALE), "pass rule", font=font, fill=THRESHOLD_COLOUR)


def _band(canvas: Image.Image, points, colour) -> Image.Image:
    """The 5th–95th percentile band, translucent."""
    if len(points) < 2:
        return canvas
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    outline = [(x, hi) for x, _, hi in points] + [(x, lo) for x, lo, _ in reversed(points)]
    ImageDraw.Draw(layer).polygon(outline, fill=(*colour, BAND_ALPHA))
    return Image.alpha_composite(canvas.convert("RGBA"), layer).convert("RGB")


def _line(draw, points, colour) -> None:
    draw.line(points, fill=colour, width=3 * SCALE, joint="curve")
    r = 4 * SCALE
    for x, y in points:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def _verticaltext(canvas: Image.Image, text: str, font, x: float, y: float) -> None:
    """`text` read bottom to top, its end at (x, y): stage names under their points."""
    width = int(font.getlength(text)) + 4
    left, top, right, bottom = font.getbbox("Hgjy")
    strip = Image.new("L", (width, bottom + 4), 0)
    ImageDraw.Draw(strip).text((0, 0), text, font=font, fill=255)
    rotated = strip.rotate(90, expand=True)
    ink = Image.new("RGB", rotated.size, INK)
    canvas.paste(ink, (int(x - rotated.width / 2), int(y)), rotated)


def _legend(draw, font, mode: str, x: float, y: float) -> None:
    s = SCALE
    rows = [(f"{name}: median, 5-95%", colour) for name, colour in MEASURE_COLOURS.items()]
    rows.append(("threshold (Spearman)", THRESHOLD_COLOUR))
    for i, (text, colour) in enumerate(rows):
        line_y = y + (10 + 26 * i) * s
        draw.line([(x, line_y), (x + 24 * s, line_y)], fill=colour, width=3 * s)
        draw.text((x + 32 * s, line_y), text, font=font, fill=INK, anchor="lm")
    how = (
        "Each stage is randomised with every stage to its left (cascading)."
        if mode == "cascading"
        else "Each stage is randomised alone (independent)."
    )
    notes = [
        "Similarity of each image's map to the trained model's map.",
        how,
        "Pass: median Spearman below the threshold at the pass rule's stage.",
    ]
    top = y + (10 + 26 * len(rows)) * s
    for note in notes:
        for text in _wrapped(note, font, 200 * s):
            draw.text((x, top), text, font=font, fill=THRESHOLD_COLOUR)
            top += 16 * s
        top += 6 * s


# -- the page ------------------------------------------------------------------------------------


def render_page(result: SanityResult, figure: str = FIGURE_NAME) -> str:
    """sanity.html as text: the verdict, the table, the figure, the maps of the first images."""
    verdict = "pass" if result.passed else "fail"
    header = [f'<p class="verdict {verdict}">{escaped(result.verdict())}</p>', _summary(result)]
    body = [
        _table(result),
        f'<p><img class="figure" src="{escaped(figure)}" alt="correlation against stage"></p>',
        errors_section(f"{len(result.skipped)} input(s) skipped", result.skipped),
        _maps(result, colormap_lut("jet")),
    ]
    title = f"gradcam sanity: {result.method} on {result.model.get('name', '?')}"
    return page_document(title, header, body, styles=["sanity.css"])


def _summary(result: SanityResult) -> str:
    model = result.model
    h, w = result.input_size
    by = result.stages[result.by_stage].name
    rows = [
        ("model", f"{model.get('name')} ({model.get('source')}, weights {model.get('weights')})"),
        ("method", f"{result.method} @ {result.layer}"),
        ("mode", f"{result.mode} (seed {result.seed})"),
        ("images", f"{len(result.images)} measured, {len(result.skipped)} skipped"),
        ("compared at", f"{h}×{w}, the model's input (maps upsampled, bilinear)"),
        (
            "pass rule",
            f"median Spearman below {result.threshold:g} at '{by}' "
            f"(stage {result.by_stage + 1} from the logits)",
        ),
        ("time", f"{result.seconds:.1f} s on {result.device}"),
    ]
    return summary_list(rows)


def _table(result: SanityResult) -> str:
    head = (
        "<tr><th>#</th><th>stage randomised"
        + (" (and those above)" if result.mode == "cascading" else " (alone)")
        + "</th><th>parameters</th><th>Spearman median</th><th>5–95%</th>"
        "<th>SSIM median</th><th>5–95%</th></tr>"
    )
    rows = []
    for i, row in enumerate(result.summary):
        below = row.spearman.median is not None and row.spearman.median < result.threshold
        classes = " ".join(
            name for name, on in (("by", i == result.by_stage), ("below", below)) if on
        )
        rows.append(
            f'<tr class="{classes}"><td>{row.from_logits}</td><td>{escaped(row.stage.name)}</td>'
            f'<td class="n">{row.stage.parameters:,}</td>'
            f'<td class="n">{fixed(row.spearman.median)}</td>'
            f'<td class="n">{fixed(row.spearman.p5)} – {fixed(row.spearman.p95)}</td>'
            f'<td class="n">{fixed(row.ssim.median)}</td>'
            f'<td class="n">{fixed(row.ssim.p5)} – {fixed(row.ssim.p95)}</td></tr>'
        )
    return (
        '<section><h2>Per stage, from the logits down</h2><table class="stages">'
        f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _maps(result: SanityResult, lut: np.ndarray) -> str:
    shown = [image for image in result.images if image.thumbnails]
    if not shown:
        return ""
    heads = "".join(f"<th>{escaped(stage.name)}</th>" for stage in result.stages)
    rows = []
    for image in shown:
        photo = _img(image.picture, f"{image.input} as the model saw it")
        cells = [
            f'<td><span class="name">{escaped(image.input)}</span>{photo}'
            f"<small>{escaped(image.label)}</small></td>",
            f"<td>{_img(_coloured(image.thumbnails[0], lut), 'trained map')}</td>",
        ]
        for stage, thumb, rho in zip(
            result.stages, image.thumbnails[1:], image.spearman, strict=True
        ):
            alt = f"map after randomising {stage.name}"
            cells.append(
                f"<td>{_img(_coloured(thumb, lut), alt)}<small>ρ {fixed(rho, 2)}</small></td>"
            )
        rows.append(f"<tr>{''.join(cells)}</tr>")
    more = len(result.images) - len(shown)
    note = f"<p>The first {len(shown)} images; {more} more are in sanity.json.</p>" if more else ""
    return (
        "<section><h2>Maps before and after each randomisation</h2>"
        f'{note}<div class="scroll"><table class="maps"><thead><tr><th>image</th>'
        f"<th>trained</th>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        "</section>"
    )


def _coloured(levels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    return np.asarray(lut, dtype=np.uint8)[levels]


def _img(pixels: np.ndarray | None, alt: str) -> str:
    if pixels is None:
        return ""
    buffer = io.BytesIO()  # JPEG: a noisy gradient map is 3× smaller than as a PNG
    Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB").save(buffer, "JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    h, w = pixels.shape[:2]
    return (
        f'<img src="data:image/jpeg;base64,{data}" width="{w}" height="{h}" alt="{escaped(alt)}">'
    )
