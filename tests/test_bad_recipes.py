"""Every recipe in tests/bad_recipes/ is refused by its stage script: exit 2, one line naming the fault, no model.

Each file says in its first comments what is wrong, its stage, and a piece of text the error must
contain (the key, file or value at fault). They run in-process through the scripts' own `main`, the
model loader replaced by one that fails the test, so "refused before loading" is checked, not assumed.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from .conftest import REPO

BAD = Path(__file__).parent / "bad_recipes"
CASES = sorted(BAD.glob("*.yaml"))


def header(path: Path, field: str) -> str:
    match = re.search(rf"^# {field}: (.+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} has no `# {field}:` line"
    return match[1].strip()


def script_main(stage: str):
    spec = importlib.util.spec_from_file_location(f"run_{stage}", REPO / "scripts" / f"run_{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_the_corpus_is_large_and_each_file_says_what_is_wrong():
    assert len(CASES) >= 40
    for path in CASES:
        assert path.read_text().startswith("# "), path.name
        header(path, "stage"), header(path, "expect")


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_recipe_is_refused_in_one_line_before_any_model_loads(path, workdir, monkeypatch, capsys):
    import alignment.model

    def no_model(*args, **kwargs):
        raise AssertionError(f"{path.name}: a model was loaded before the recipe was refused")

    monkeypatch.setattr(alignment.model, "load_model", no_model)
    monkeypatch.chdir(workdir)
    main = script_main(header(path, "stage"))
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert header(path, "expect") in errors[0], errors[0]
