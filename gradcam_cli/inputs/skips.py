"""Which folders a search for inputs leaves out: --out, and other runs' outputs.

A run's overlays are images too (and so are a comparison's thumbnails); explaining them again
would be a mistake nobody meant.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..comparison import COMPARISON_NAME
from ..report import REPORT_HEAD_BYTES, is_report_head, is_report_name
from ..report.names import CONCEPTS_NAME
from .filekinds import is_image_name, open_regular

_HELD = {
    "report": "another run's report",
    "comparison": "a gradcam comparison",
    "concepts": "gradcam concepts' report",
}
_SHOWN_FOLDERS = 3


class Skips:
    """Which folders a folder walk or a glob leaves out, and how many files it left there.

    --out is recognised by device and inode (and by its resolved path for folders named
    inside it), so './out', 'out' and a symlink to it are the same folder; another run's
    output by the report it holds, a `gradcam compare` output by its comparison.json, a
    `gradcam concepts` output by its concepts.json.
    """

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        self.out_real = os.path.realpath(out_dir) if out_dir is not None else None
        self.out_id = _folder_identity(out_dir) if out_dir is not None else None
        self.in_out = 0
        self.in_reports = 0
        self.report_folders: list[str] = []
        self.held: set[str] = set()  # "report", "comparison": what the skipped folders held
        self._verdicts: dict[str, str | None] = {}

    def skip_folder(
        self, folder: str, entries: list[os.DirEntry] | None = None, below_a_walk: bool = False
    ) -> bool:
        """True (and its images counted) when `folder` is --out or holds a report.

        `below_a_walk`: a folder entered by a walk that did not skip its parent, so it can only
        be --out itself, not lie inside it: one stat, no resolving of its path.
        """
        verdict = self._verdict(folder, entries, below_a_walk)
        if verdict is None:
            return False
        self._count(verdict, folder, _count_images(folder))
        return True

    def skip_file(self, path: str, root: str) -> bool:
        """True (and counted) when a glob's match lies in --out or in a folder holding a
        report, between the glob's `root` and the file."""
        folder = os.path.dirname(path) or os.curdir
        while True:
            verdict = self._verdict(folder)
            if verdict is not None:
                self._count(verdict, folder, 1)
                return True
            parent = os.path.dirname(folder) or os.curdir
            if parent == folder or len(folder) <= len(root):
                return False
            folder = parent

    def skipped(self, folder: str) -> bool:
        return self._verdicts.get(folder) is not None

    def _verdict(
        self, folder: str, entries: list[os.DirEntry] | None = None, below_a_walk: bool = False
    ) -> str | None:
        if folder not in self._verdicts:
            self._verdicts[folder] = self._judge(folder, entries, below_a_walk)
        return self._verdicts[folder]

    def _judge(
        self, folder: str, entries: list[os.DirEntry] | None, below_a_walk: bool
    ) -> str | None:
        if self.out_id is not None:
            if _folder_identity(folder) == self.out_id:
                return "out"
            if not below_a_walk and _is_below(folder, self.out_real):
                return "out"
        if entries is None:
            try:
                with os.scandir(folder) as listing:
                    entries = list(listing)
            except OSError:
                return None
        for entry in entries:
            if is_report_name(entry.name) and _is_gradcam_json(entry.path, "results"):
                return "report"
            if entry.name == COMPARISON_NAME and _is_gradcam_json(entry.path, "pairs"):
                return "comparison"
            if entry.name == CONCEPTS_NAME and _is_gradcam_json(entry.path, "concepts"):
                return "concepts"
        return None

    def _count(self, verdict: str, folder: str, files: int) -> None:
        if verdict == "out":
            self.in_out += files
        else:
            self.in_reports += files
            self.held.add(verdict)
            if folder not in self.report_folders:
                self.report_folders.append(folder)

    def message(self) -> str | None:
        """'skipped 12 files inside out='gradcam_out' and 6 in folders holding another run's
        report (runs/a); name a file explicitly to explain it', or None."""
        parts = []
        if self.in_out:
            parts.append(f"{_files(self.in_out)} inside out='{self.out_dir}'")
        if self.in_reports:
            shown = ", ".join(self.report_folders[:_SHOWN_FOLDERS])
            more = len(self.report_folders) - _SHOWN_FOLDERS
            shown += f" and {more} more" if more > 0 else ""
            count = self.in_reports if parts else _files(self.in_reports)
            held = " or ".join(noun for verdict, noun in _HELD.items() if verdict in self.held)
            parts.append(f"{count} in folders holding {held} ({shown})")
        if not parts:
            return None
        return f"skipped {' and '.join(parts)}; name a file explicitly to explain it"


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def _folder_identity(folder: str | os.PathLike) -> tuple[int, int] | None:
    try:
        info = os.stat(folder)
    except OSError:  # --out not made yet: nothing inside it to skip
        return None
    return (info.st_dev, info.st_ino) if info.st_ino else None


def _is_below(folder: str, root: str | None) -> bool:
    if root is None:
        return False
    real = os.path.realpath(folder)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _count_images(folder: str) -> int:
    """Image-named files under `folder`, as a walk would find them (for the skip message)."""
    count = 0
    for _, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        count += sum(not n.startswith(".") and is_image_name(n) for n in filenames)
    return count


def _is_gradcam_json(path: str, list_key: str) -> bool:
    """Whether `path` is a gradcam report (`list_key` "results"), comparison ("pairs") or
    concepts report ("concepts"): read whole when small, by its head otherwise."""
    try:
        with open_regular(Path(path)) as handle:
            head = handle.read(REPORT_HEAD_BYTES + 1)
    except OSError:
        return False
    return is_report_head(head, list_key)
