"""Markdown helpers of the generated pages: escaping, tables, and the project's
docstrings (numpydoc sections, Sphinx roles, RST definition lists) as Markdown."""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap
from typing import Iterable, Sequence

from _gen.griffe_docstrings import rst_roles_to_markdown

_ESCAPE = str.maketrans({"\\": "\\\\", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]",
                         "<": "&lt;", ">": "&gt;", "|": "\\|", "#": "\\#"})


def esc(value: object) -> str:
    """``value`` as Markdown text that renders as written (in a table cell too)."""
    return " ".join(str(value).split()).translate(_ESCAPE)


def prose(text: object) -> str:
    """Docstring prose on one line, for a table cell: Sphinx roles become code spans, code
    spans are kept, and outside them a pipe or an HTML-looking ``<`` is escaped."""
    text = rst_roles_to_markdown(" ".join(str(text).split()))
    parts = re.split(r"(``.+?``|`[^`]+`)", text)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"<(?=[A-Za-z/!])", "&lt;", parts[i].replace("|", "\\|"))
    return "".join(parts)


def code(value: object) -> str:
    """``value`` as a code span (in a table cell too)."""
    text = " ".join(str(value).split())
    ticks = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"  # a pipe in a code span does not split a table cell


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; cells are used as given (escape them with :func:`esc` or :func:`code`)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = ["" if c is None else str(c) for c in row]
        out.append("| " + " | ".join(c if c else " " for c in cells) + " |")
    return "\n".join(out) + "\n"


def indent(text: str) -> str:
    """``text`` indented by four spaces (the body of an admonition), blank lines kept empty."""
    return "\n".join(("    " + line) if line else "" for line in text.split("\n"))


def fmt_number(value: object, digits: int = 3) -> str:
    """A number as the tables write it: integers as they are, other numbers to ``digits``
    significant digits (numbers read from CSV text too); missing values and NaN as a dash."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        try:
            return str(int(value))
        except ValueError:
            pass
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if v != v:
        return "-"
    return f"{v:.{digits}g}"


def pct(value: object, digits: int = 1) -> str:
    """A rate in [0, 1] as a percentage (``12.5%``); a dash when missing."""
    if value is None or value == "":
        return "-"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    if v != v:
        return "-"
    return f"{100 * v:.{digits}f}%"


# ------------------------------------------------------------------------------ docstrings

_UNDERLINE = re.compile(r"^\s*(-{3,}|={3,}|~{3,})\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[*+-]|\d+\.)\s+\S")


def module_doc(name: str) -> str:
    """The docstring of module ``name`` (cleaned), or an empty string."""
    return inspect.cleandoc(importlib.import_module(name).__doc__ or "")


def docstring_markdown(doc: str, heading_level: int = 3, skip_first_line: bool = False) -> str:
    """One of the project's docstrings as Markdown.

    * RST section titles (a line underlined with dashes) become headings of ``heading_level``;
    * Sphinx roles become code spans; a line ending in ``::`` ends in ``:`` (its indented
      block is a code block in Markdown too);
    * RST definition lists (a term line directly followed by an indented body) become
      Markdown definition lists (``def_list``);
    * a list that directly follows a paragraph line gets the blank line Markdown needs.
    """
    lines = inspect.cleandoc(doc).split("\n")
    if skip_first_line:
        while lines and lines[0].strip():
            lines.pop(0)
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        nxt = lines[i + 1].rstrip() if i + 1 < len(lines) else ""
        if line.strip() and _UNDERLINE.match(nxt) and len(nxt.strip()) >= len(line.strip()) \
                and not line.startswith(" "):
            if out and out[-1].strip():
                out.append("")
            out.append("#" * heading_level + " " + line.strip())
            out.append("")
            i += 2
            continue
        if line.endswith("::"):
            line = line[:-1]
        indented_next = nxt.startswith("    ") and nxt.strip()
        prev = out[-1] if out else ""
        if line.strip() and not line.startswith(" ") and indented_next and not _LIST_ITEM.match(line) \
                and not prev.strip() and not line.rstrip().endswith(":"):
            # a definition list: term, then its body (indented by four)
            out.append(line)
            body = []
            j = i + 1
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                if not lines[j].strip() and (j + 1 >= len(lines) or not lines[j + 1].startswith("    ")):
                    break
                body.append(lines[j].rstrip())
                j += 1
            body = textwrap.dedent("\n".join(body)).split("\n")
            out.append(":   " + body[0])
            out += [("    " + b) if b.strip() else "" for b in body[1:]]
            out.append("")
            i = j
            continue
        if _LIST_ITEM.match(line) and prev.strip() and not _LIST_ITEM.match(prev) \
                and not prev.startswith(" ") and not line.startswith(" "):
            out.append("")
        out.append(line)
        i += 1
    text = "\n".join(out)
    text = rst_roles_to_markdown(text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def first_sentence(text: str) -> str:
    """The first sentence of a description (up to the first full stop followed by a space)."""
    text = " ".join(text.split())
    m = re.search(r"(?<![.e]\.g)(?<!i\.e)\.(\s|$)", text)
    return text[: m.start() + 1] if m else text


def without_measurements(text: str) -> str:
    """``text`` without the parenthetical remarks that report a measurement (they belong
    with the results, not with a setting's meaning)."""
    out, depth, start = [], 0, 0
    groups = []
    for i, ch in enumerate(text):
        if ch == "(":
            if depth == 0:
                start = i
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
            if depth == 0:
                groups.append((start, i + 1))
    keep, last = [], 0
    for a, b in groups:
        inner = text[a:b].lower()
        if "measured" in inner or "instead of" in inner:
            keep.append(text[last:a].rstrip())
            last = b
    keep.append(text[last:])
    return " ".join("".join(keep).split())
