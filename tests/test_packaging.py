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


def test_every_data_file_is_declared_package_data():
    # setuptools ships only .py files from a package unless `package-data` names the others (the lm-eval
    # task YAMLs): an editable install finds them, a wheel would not.
    import fnmatch

    import tomllib

    declared = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    data = [p for p in SRC.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    undeclared = [
        str(p.relative_to(SRC.parent))
        for p in data
        if not any(
            fnmatch.fnmatch(p.name, glob)
            for glob in declared.get(".".join(p.parent.relative_to(SRC.parent).parts), [])
        )
    ]
    assert data and undeclared == []
