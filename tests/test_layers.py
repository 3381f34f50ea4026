"""The house's floors point down: the import-linter contract in pyproject.toml holds."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_lint_imports_layers_contract_is_kept():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


def test_no_module_level_import_cycle():
    """No two project modules import each other, at any depth (grimp's graph, as
    import-linter builds it)."""
    import grimp

    graph = grimp.build_graph("fl_defense", "attacks", "clients", "strategies", "experiments", "deploy",
                              "benchmarks")
    cycles = []
    for module in sorted(graph.modules):
        for other in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=other, imported=module):
                cycles.append((module, other))
    assert not cycles, cycles
