"""Generate the manual's generated pages when the site is built (mkdocs-gen-files).

* ``reference/cli.md``, ``reference/config.md``, ``reference/registries.md``: from the
  argparse parsers, ``ExperimentConfig`` and ``pyproject.toml``, and the registries;
* ``results/*.md``: from the result files committed under ``docs/results/``;
* every hand-written page with a ``<!-- gen:NAME -->`` line: that line replaced by the
  table or text ``NAME`` of ``_gen.snippets.SNIPPETS`` (an unknown name stops the build).

Nothing here is written to the repository: the pages exist only in the built site.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import mkdocs_gen_files

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
for path in (str(DOCS), str(ROOT)):  # the helpers, and the project's code (this checkout's)
    if path not in sys.path:
        sys.path.insert(0, path)

from _gen import reference, results, snippets  # noqa: E402

MARKER = re.compile(r"^(?P<indent>[ ]*)<!-- gen:(?P<name>[a-z0-9-]+) -->$", re.M)


def write(name: str, text: str) -> None:
    with mkdocs_gen_files.open(name, "w") as f:
        f.write(text)


def fill_markers() -> None:
    """Replace the ``<!-- gen:NAME -->`` lines of the hand-written pages."""
    for page in sorted(DOCS.rglob("*.md")):
        rel = page.relative_to(DOCS).as_posix()
        if rel.startswith(("results/", "_gen/")):
            continue
        text = page.read_text(encoding="utf-8")
        if not MARKER.search(text):
            continue

        def one(match: re.Match) -> str:
            name, indent = match.group("name"), match.group("indent")
            if name not in snippets.SNIPPETS:
                raise KeyError(f"{rel}: unknown generated block <!-- gen:{name} -->; known: "
                               f"{', '.join(snippets.SNIPPETS)}")
            block = snippets.SNIPPETS[name]().strip()
            return "\n".join(indent + line if line else "" for line in block.split("\n")) + "\n"

        write(rel, MARKER.sub(one, text))
        mkdocs_gen_files.set_edit_path(rel, rel)


def main() -> None:
    with warnings.catch_warnings():  # the deprecation notices of Flower's dependencies, on import
        warnings.simplefilter("ignore", DeprecationWarning)
        pages()


def pages() -> None:
    write("reference/cli.md", reference.cli_reference())
    write("reference/config.md", reference.config_reference())
    write("reference/registries.md", reference.registries_page())
    results_dir = Path(mkdocs_gen_files.config.docs_dir) / "results"
    write("results/index.md", results.index_page(results_dir))
    for name, (_, render) in results.PAGES.items():
        write(name, render(results_dir))
    fill_markers()


main()
