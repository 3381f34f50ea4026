"""A griffe extension that reads the project's docstrings as the project writes them.

The code documents itself in numpydoc sections whose entries are ``name : description``
(the text after the colon is prose, not a type) and cross-references objects with Sphinx
roles (``:class:`Registry```).  mkdocstrings renders Markdown, so, before griffe parses a
docstring, this extension

* turns every ``name : description`` entry of a numpydoc section (Parameters, Attributes,
  Returns, Raises ...) into ``name`` with the description on the next line, indented, so
  that the description lands in the description column instead of the type column;
* turns Sphinx roles into code spans (``:func:`a.b``` -> ```a.b```; ``~a.b.C`` -> ``C``;
  ``text <target>`` -> ``text``);
* ends a paragraph that introduces a literal block with one colon (RST's ``::``): the
  indented block after it is a code block in Markdown as it is.

Only the rendered text changes; the source keeps its docstrings.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["ProjectDocstrings", "rst_roles_to_markdown", "numpydoc_entries", "rst_literal_markers"]

ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|data|exc|obj|const|ref|term):`([^`]+)`", re.S)
SECTIONS = {"parameters", "other parameters", "attributes", "returns", "yields", "raises", "warns",
            "receives", "methods"}
ENTRY = re.compile(r"^(?P<indent>\s*)(?P<names>[A-Za-z_*][\w*]*(?:\s*,\s*[A-Za-z_*][\w*]*)*|[A-Za-z_][\w.]*"
                   r"(?: of [\w.]+)?) : (?P<text>\S.*)$")


def _role(match: re.Match) -> str:
    text = " ".join(match.group(2).split())
    if "<" in text and text.endswith(">"):
        text = text[: text.index("<")].strip() or text
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return f"``{text}``"


def rst_roles_to_markdown(text: str) -> str:
    """Sphinx cross-reference roles as Markdown code spans."""
    return ROLE.sub(_role, text)


def rst_literal_markers(text: str) -> str:
    """``text::`` -> ``text:`` and a lone ``::`` dropped, at the end of a line."""
    text = re.sub(r"(?m)(\S)::[ \t]*$", r"\1:", text)
    return re.sub(r"(?m)[ \t]+::[ \t]*$", "", text)


def numpydoc_entries(text: str) -> str:
    """``name : description`` entries of numpydoc sections as ``name`` + indented description."""
    lines = text.split("\n")
    out: list[str] = []
    section = None
    base = None
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        stripped = line.strip()
        if stripped and nxt.strip() and set(nxt.strip()) == {"-"} and len(nxt.strip()) >= len(stripped):
            section, base = stripped.lower(), None
            out.append(line)
            continue
        if section in SECTIONS and stripped and not set(stripped) <= {"-"}:
            indent = len(line) - len(line.lstrip())
            if base is None:
                base = indent
            m = ENTRY.match(line)
            if m and indent == base:
                pad = m.group("indent")
                out.append(f"{pad}{m.group('names')}")
                out.append(f"{pad}    {m.group('text')}")
                continue
        out.append(line)
    return "\n".join(out)


class ProjectDocstrings(griffe.Extension):
    """Rewrite docstrings (see the module docstring) as soon as griffe creates an object."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:  # griffe >= 1
        docstring = getattr(obj, "docstring", None)
        if docstring is not None and docstring.value:
            docstring.value = rst_literal_markers(rst_roles_to_markdown(numpydoc_entries(docstring.value)))
