"""Run a stage script in its own process: the `alignment` command, the demo and (later) pipelines use this.

A process per stage frees all memory between stages and is exactly what a user runs by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alignment.errors import RecipeError


def repo_root() -> Path:
    """The checkout holding `scripts/` and `recipes/`: the current folder if it has them, else the package's."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / "scripts").is_dir() and (candidate / "recipes").is_dir():
            return candidate
    raise RecipeError("no scripts/ folder here: run from a checkout of the repository (pip install -e .)")


def script_path(stage: str) -> Path:
    scripts = repo_root() / "scripts"
    path = scripts / f"run_{stage}.py"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("run_") for p in scripts.glob("run_*.py"))
        raise RecipeError(f"no script for stage {stage!r}; stages: {', '.join(known)}")
    return path


def stage_command(stage: str, recipe: str, overrides: list[str] | None = None,
                  accelerate_config: str | None = None, num_processes: int | None = None) -> list[str]:  # fmt: skip
    """The command line that runs `stage` on `recipe`: plain Python, or `accelerate launch` when asked."""
    command = [str(script_path(stage)), *([recipe] if recipe else []), *(overrides or [])]  # eval: no recipe
    if accelerate_config is None and num_processes is None:
        return [sys.executable, *command]
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config is not None:
        launch += ["--config_file", accelerate_config]
    if num_processes is not None:
        launch += ["--num_processes", str(num_processes)]
        if num_processes > 1 and accelerate_config is None:
            launch += ["--multi_gpu"]  # on CPU too: `--cpu` would silently run a single process
    return [*launch, *command]


def run_stage(stage: str, recipe: str, overrides: list[str] | None = None, log_file: Path | None = None,
              **launch: object) -> subprocess.CompletedProcess:  # fmt: skip
    """Run one stage to completion; its output goes to `log_file` if given, else to this terminal."""
    command = stage_command(stage, recipe, overrides, **launch)  # type: ignore[arg-type]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if log_file is None:
        return subprocess.run(command, env=env, check=False)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as log:
        return subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
