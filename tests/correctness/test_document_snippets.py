"""The tutorial's import lines, as written and as they should be."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.mark.parametrize(
    "line",
    ["from multiprocess import shared memory", ".from multiprocess import Manager"],
)
def test_document_import_lines_do_not_compile(line: str) -> None:
    """Both of the tutorial's "More Options" import lines are syntax errors."""
    with pytest.raises(SyntaxError):
        compile(line, "<seed-document>", "exec")


def test_multiprocess_is_not_the_standard_library() -> None:
    """``multiprocess`` (no "ing") is a third-party fork, not the module the tutorial means."""
    assert "multiprocessing" in sys.stdlib_module_names
    assert "multiprocess" not in sys.stdlib_module_names


def test_corrected_imports_work() -> None:
    """``from multiprocessing import shared_memory`` and ``Manager`` are what exists."""
    shared_memory = importlib.import_module("multiprocessing.shared_memory")
    assert callable(shared_memory.SharedMemory)
    multiprocessing = importlib.import_module("multiprocessing")
    assert callable(multiprocessing.Manager)
