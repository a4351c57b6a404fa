"""MkDocs hook: the pages that must not drift from the code are generated when the site is built.

- `<!-- gradcam --help -->` becomes the `--help` page of `gradcam` and of every command, in the
  app's order, rendered by the Typer app itself: a new command or option appears by itself.
- `<!-- README.md -->` becomes the README, its `docs/` links made relative to the site, so the
  home page is the README and a broken link in it fails `mkdocs build --strict` too.

Importing `gradcam_cli.cli` does not import torch, so the build takes a second.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
HELP_MARKER = "<!-- gradcam --help -->"
README_MARKER = "<!-- README.md -->"
HELP_WIDTH = 100  # columns: the width tests/test_help.py reads the pages at


def on_page_markdown(markdown: str, page, config, files) -> str:
    if HELP_MARKER in markdown:
        markdown = markdown.replace(HELP_MARKER, help_pages())
    if README_MARKER in markdown:
        markdown = markdown.replace(README_MARKER, readme_for_the_site())
    return markdown


def help_pages() -> str:
    """`gradcam --help`, then each command's, as Markdown sections of fenced text."""
    sys.path.insert(0, str(ROOT))  # the source tree the site documents, whatever is installed
    import typer.main

    from gradcam_cli.cli import app

    commands = [[], *([name] for name in typer.main.get_command(app).commands)]
    return "\n\n".join(help_section(app, command) for command in commands)


def help_section(app, command: list[str]) -> str:
    from typer.testing import CliRunner

    result = CliRunner().invoke(
        app, [*command, "--help"], prog_name="gradcam", terminal_width=HELP_WIDTH
    )
    if result.exit_code != 0:
        raise RuntimeError(f"gradcam {' '.join(command)} --help failed:\n{result.output}")
    title = " ".join(["gradcam", *command])
    return f"## `{title}`\n\n```text\n{result.output.rstrip()}\n```"


def readme_for_the_site() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.sub(r'(\]\(|src=")docs/', r"\1", readme)
