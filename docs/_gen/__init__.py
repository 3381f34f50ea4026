"""Helpers of ``docs/gen_pages.py``: the pages of the manual that are generated from the code
and from the committed result files at build time (mkdocs-gen-files), so that they cannot
drift from what they describe."""
