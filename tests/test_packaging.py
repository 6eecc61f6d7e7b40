"""The installable package: a non-editable `pip install .` must ship every module."""

from __future__ import annotations

from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "alignment"


def test_every_module_folder_is_a_regular_package():
    # setuptools' find_packages skips folders without __init__.py: they work in an editable install
    # (namespace packages) and silently vanish from a wheel.
    folders = {p.parent for p in SRC.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(SRC.parent)) for f in folders if not (f / "__init__.py").is_file())
    assert missing == []
