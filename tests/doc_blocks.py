"""The fenced blocks of a Markdown page, with the doc-test markers written above each.

Markers (CONTRIBUTING.md): ``<!-- doc-test: skip -->`` (a reason may follow ``skip``)
leaves a whole block out; ``<!-- doc-test: skip-lines PREFIX -->`` the lines starting
with PREFIX. They stand on the lines just above the fence, up to the first other line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FENCE = re.compile(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!--\s*doc-test:\s*(skip-lines|skip)\b\s*(.*?)\s*-->")


@dataclass
class Fenced:
    """One fenced block: its language, the page line of its fence, its code (the
    block's indent removed, as inside a list item) and the markers above it."""

    language: str
    line: int
    code: str
    skipped: bool
    skipped_prefixes: list[str]


def fenced(text: str, languages: tuple[str, ...]) -> list[Fenced]:
    """The blocks of ``text`` in one of ``languages``, in page order."""
    found = []
    for match in FENCE.finditer(text):
        if match[2] not in languages:
            continue
        above = text[: match.start()].rstrip("\n").splitlines()
        kinds: list[str] = []
        prefixes: list[str] = []
        while above and (marker := MARKER.fullmatch(above[-1].strip())):
            above.pop()
            kinds.append(marker[1])
            if marker[1] == "skip-lines":
                prefixes.append(marker[2])
        indent = len(match[1])
        code = "".join(line[indent:] for line in match[3].splitlines(keepends=True))
        line = text[: match.start()].count("\n") + 1
        found.append(Fenced(match[2], line, code, "skip" in kinds, prefixes))
    return found
