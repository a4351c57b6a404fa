"""What a terminal shows once a program has written `text` to it: the part of VT100 that
progress bars use (carriage return, erase in line, cursor up and down); colours and the cursor's
visibility change nothing on the screen and are skipped. And how to read what a program wrote
to a pseudo-terminal."""

from __future__ import annotations

import os
import re

_TOKEN = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b|\r|\n|[^\x1b\r\n]")


def screen(text: str) -> list[str]:
    """The screen's lines, top to bottom, trailing blanks removed."""
    rows: list[list[str]] = [[]]
    row = col = 0
    for token in _TOKEN.finditer(text):
        char, params, final = token.group(0), token.group(1), token.group(2)
        if char == "\n":  # the pty turns it into \r\n (onlcr)
            row, col = row + 1, 0
            rows.extend([] for _ in range(row + 1 - len(rows)))
        elif char == "\r":
            col = 0
        elif final:
            count = int(params) if params.isdigit() else 1
            if final == "A":
                row = max(0, row - count)
            elif final == "B":
                row += count
                rows.extend([] for _ in range(row + 1 - len(rows)))
            elif final == "K":  # 0: to the end of the line, 2: the whole line
                line = rows[row]
                start = 0 if params == "2" else col
                line[start:] = [" "] * max(0, len(line) - start)
            elif final == "G":
                col = count - 1
        elif char != "\x1b":
            line = rows[row]
            line.extend(" " for _ in range(col + 1 - len(line)))
            line[col] = char
            col += 1
    lines = ["".join(line).rstrip() for line in rows]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def read_until_closed(fd: int) -> str:
    """All a program writes to the pseudo-terminal whose primary end is `fd`, until it closes
    its end (or exits). Read on a thread while a program writes much: a full pty blocks it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")
