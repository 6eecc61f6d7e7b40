"""Every recipe in tests/bad_recipes/ is refused by its stage script: exit 2, one line naming the fault, no model.

Each file says in its first comments what is wrong, its stage, and a piece of text the error must
contain (the key, file or value at fault). They run in-process through the scripts' own `main`, the
model loader replaced by one that fails the test, so "refused before loading" is checked, not assumed.
Each is refused by `--dry_run` too, with the same text, unless its `# dry_run: passes (why)` says why not.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from .conftest import REPO

BAD = Path(__file__).parent / "bad_recipes"
CASES = sorted(BAD.glob("*.yaml"))


def header(path: Path, field: str, required: bool = True) -> str | None:
    match = re.search(rf"^# {field}: (.+)$", path.read_text(), re.MULTILINE)
    assert match or not required, f"{path.name} has no `# {field}:` line"
    return match[1].strip() if match else None


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
    passing = [p.name for p in CASES if header(p, "dry_run", required=False)]
    assert passing == ["sft-missing-model-folder.yaml"]  # rare, and each says why


def refusal(main, argv: list[str], capsys) -> tuple[int, list[str]]:
    """The exit status and the `error:` lines of one in-process run of a stage script."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_recipe_is_refused_in_one_line_before_any_model_loads(path, workdir, monkeypatch, capsys):
    import alignment.model

    def no_model(*args, **kwargs):
        raise AssertionError(f"{path.name}: a model was loaded before the recipe was refused")

    monkeypatch.setattr(alignment.model, "load_model", no_model)
    monkeypatch.chdir(workdir)
    code, errors = refusal(script_main(header(path, "stage")), [str(path)], capsys)
    assert code == 2
    assert len(errors) == 1, errors
    assert header(path, "expect") in errors[0], errors[0]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_recipe_is_refused_by_the_dry_run_too(path, workdir, monkeypatch, capsys):
    """The dry run reads no weights, but the first rows of local data and local model folders: same refusal."""
    monkeypatch.chdir(workdir)
    code, errors = refusal(script_main(header(path, "stage")), [str(path), "--dry_run"], capsys)
    if header(path, "dry_run", required=False):
        assert (code, errors) == (0, []), errors
        return
    assert code == 2
    assert len(errors) == 1, errors
    assert header(path, "expect") in errors[0], errors[0]
