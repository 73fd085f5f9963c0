"""A Griffe extension for the API reference: the reStructuredText markup of the docstrings as Markdown.

The docstrings are numpydoc with Sphinx roles (``:func:`lambdahat.prepare```), ``.. math::`` and
``.. code-block::`` directives, ``::`` literal blocks and simple tables. mkdocstrings renders Markdown, so before a
docstring is parsed this extension rewrites, without touching the source:

* a role ``:kind:`target``` as inline code of its target (``~a.b.c`` shows ``c``; ``text <target>`` shows
  ``text``);
* a ``.. math::`` or ``.. code-block::`` directive line as nothing, so that its indented body becomes a code block;
* a paragraph ending in ``::`` as one ending in ``:`` (the indented block after it is a code block already);
* a simple table (rows between lines of ``====  ====``) as a Markdown table.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const|math|ref|doc|term):`([^`]+)`")
DIRECTIVE = re.compile(r"^\s*\.\. (?:math|code-block|code)::.*$")
LITERAL = re.compile(r"(\S)::$")
BORDER = re.compile(r"^(\s*)(=+)((?: +=+)+)\s*$")


def _role(match: re.Match[str]) -> str:
    target = match.group(1)
    shown = re.match(r"^(.*?)\s*<([^>]+)>$", target)
    if shown:
        target = shown.group(1)
    elif target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target}`"


def _table(lines: list[str], start: int) -> tuple[list[str], int] | None:
    """The simple table whose first border is ``lines[start]`` as Markdown lines, and the index after it."""
    border = lines[start]
    starts = [m.start() for m in re.finditer(r"=+", border)]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == border.strip()), None)
    if end is None:
        return None
    rows: list[list[str]] = []
    header: list[list[str]] = []
    for i in range(start + 1, end):
        if BORDER.match(lines[i]):  # a border inside: the rows above it are the header
            header, rows = rows, []
            continue
        line = lines[i].ljust(len(border))
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], len(line)], strict=True)]
        if rows and not cells[0]:  # a continuation line of the previous row
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells, strict=True)]
        elif any(cells):
            rows.append(cells)
    head = header[0] if header else [""] * len(starts)
    out = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(starts)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return [*out, ""], end + 1


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with its reStructuredText roles, directives and simple tables in Markdown."""
    lines = ROLE.sub(_role, text).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if BORDER.match(line):
            table = _table(lines, i)
            if table is not None:
                out += table[0]
                i = table[1]
                continue
        if not DIRECTIVE.match(line):
            out.append(LITERAL.sub(r"\1:", line))
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring once the object tree is built (see the module docstring)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
