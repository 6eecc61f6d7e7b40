"""Reproducibility manifest: every run writes `run_manifest.json`, and `alignment rerun` repeats it.

    alignment rerun runs/tiny/sft/run_manifest.json --output_dir runs/tiny/sft-again

transformers saves the resolved `TrainingArguments` (`training_args.bin`), but not the recipe file as
it was read, the command line, the code (git commit, package versions), the machine, or which data
files (by content) made the rows; TRL's model card names the framework versions only. This module
fills that gap. The manifest is written whole (a `.tmp` file, then renamed) on the main process when
the run starts, and completed with the data when training returns:

- `stage`, `recipe_path`, `recipe` (the file's mapping as read, so editing the file later changes
  nothing a rerun does), `overrides`, `resolved` (every value the recipe set, as resolved), `notes`;
- `command` (argv, cwd, the launcher's world size and accelerate's mixed precision / distributed
  type), `packages`, `git` (commit and dirty flag of the repository holding the recipe, else the
  current folder's), `seeds`, `hardware`, `resumed_from`;
- `data`: rows and `datasets` fingerprint per split, sha256 and size of every local data file, rows
  read/kept per source (from the data report);
- `started`, `finished` (UTC; `finished` is when `trainer.train()` returned, before the final save).

No credential is recorded: `hub_token` and credential-like names of an `env:` block are left out of
`recipe`, a `--hub_token` value out of `overrides` (all listed in `credentials_removed`), and every
string passes through `alignment.secrets.redact`. A rerun takes them from its own environment.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.errors import RecipeError

if TYPE_CHECKING:
    from alignment.data.mixture import MixtureConfig
    from alignment.data.report import DataReport
    from alignment.recipe import Recipe

logger = logging.getLogger(__name__)

MANIFEST = "run_manifest.json"
RERUN_RECIPE = "rerun_recipe.yaml"
PACKAGES = (
    "alignment", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "deepspeed", "bitsandbytes",
)  # fmt: skip
# What the launcher says about the launch: processes, and accelerate's precision and distributed type.
LAUNCH_ENV = (
    "WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU",
    "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
    "ACCELERATE_USE_FSDP", "ACCELERATE_USE_MEGATRON_LM", "ACCELERATE_DYNAMO_BACKEND",
)  # fmt: skip
HASH_CHUNK = 16 << 20  # 16 MiB: a multi-GB data file is hashed in constant memory


# --- Writing the manifest ------------------------------------------------------------------------------


def record_start(recipe: Recipe, resumed_from: str | None = None) -> Path:
    """Write the manifest's first version into `output_dir` (call on the main process only)."""
    return write_manifest(Path(recipe.training.output_dir), start_manifest(recipe, resumed_from))


def record_data(recipe: Recipe, datasets: Any, data_report: DataReport | None = None) -> Path:
    """Complete the manifest with the data the run trained on, and the time training finished."""
    output = Path(recipe.training.output_dir)
    path = output / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):  # a run started without `begin_run` (a library user): record it now
        manifest = start_manifest(recipe)
    manifest["data"] = data_record(datasets, data_report, recipe.mixture)
    manifest["finished"] = now()
    return write_manifest(output, manifest)


def start_manifest(recipe: Recipe, resumed_from: str | None = None) -> dict[str, Any]:
    """Everything known when a run starts: recipe, command, code, seeds, machine."""
    from alignment.check import resolved_values
    from alignment.recipe import drop_options

    mapping, removed = recorded_recipe(recipe.path)
    overrides, dropped = drop_options(recipe.cli_overrides, ("hub_token",))
    return {
        "stage": recipe.stage,
        "recipe_path": recipe.path,
        "recipe": mapping,
        "overrides": overrides,
        "credentials_removed": removed + dropped,
        "resolved": resolved_values(recipe),
        "notes": list(recipe.notes),
        "command": command_record(),
        "packages": package_versions(),
        "git": git_of(recipe.path),
        "seeds": {
            "seed": recipe.training.seed,
            "data_seed": recipe.training.data_seed,
            "mixture_seed": recipe.mixture.seed,
        },
        "hardware": hardware_record(recipe.world_size),
        "resumed_from": resumed_from,
        "data": None,
        "started": now(),
        "finished": None,
    }


def write_manifest(output: Path, manifest: dict[str, Any]) -> Path:
    """Write `manifest` redacted, whole: to a `.tmp` file, then renamed over the old one."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(redacted(manifest), indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def redacted(value: Any) -> Any:
    """`value` with every string in it (keys too) passed through `alignment.secrets.redact`."""
    from alignment.secrets import redact

    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redacted(k) if isinstance(k, str) else k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- The pieces -----------------------------------------------------------------------------------------


def recorded_recipe(path: str | None) -> tuple[dict[str, Any], list[str]]:
    """The recipe file's mapping as `load_recipe_file` reads it, its `env:` block put back, credentials out.

    Returns the mapping and the names removed (`hub_token`, `env.WANDB_API_KEY`, ...).
    """
    if not path:
        return {}, []
    import yaml

    from alignment.recipe import load_recipe_file
    from alignment.secrets import SECRET_NAME

    mapping = load_recipe_file(path)  # pops `env:` (after setting it, as the run already did)
    env = (yaml.safe_load(Path(path).read_text()) or {}).get("env") or {}
    removed = []
    if "hub_token" in mapping:
        del mapping["hub_token"]
        removed.append("hub_token")
    kept = {}
    for name, value in env.items():
        if SECRET_NAME.search(str(name)):
            removed.append(f"env.{name}")
        else:
            kept[name] = value
    if kept:
        mapping["env"] = kept
    return json.loads(json.dumps(mapping, default=str)), removed


def command_record() -> dict[str, Any]:
    """The process's command line, folder, and what the launcher set about the launch."""
    return {
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "env": {name: os.environ[name] for name in LAUNCH_ENV if name in os.environ},
    }


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of `names` (None when absent), and Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_of(recipe_path: str | None) -> dict[str, Any] | None:
    """`git_state` of the recipe file's repository, else of the current folder's; None outside both."""
    folders = [Path(recipe_path).resolve().parent] if recipe_path else []
    for folder in [*folders, Path.cwd()]:
        if (state := git_state(folder)) is not None:
            return state
    return None


def git_state(folder: Path) -> dict[str, Any] | None:
    """`{"root", "commit", "dirty"}` of the git repository holding `folder`; None outside one or without git."""
    head = _git(folder, "rev-parse", "--show-toplevel", "HEAD")
    status = _git(folder, "status", "--porcelain") if head is not None else None
    if head is None or status is None or len(head.split()) != 2:
        return None
    root, commit = head.split()
    return {"root": root, "commit": commit, "dirty": bool(status.strip())}


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):  # no git installed, or it hung
        return None
    return done.stdout if done.returncode == 0 else None


def hardware_record(world_size: int) -> dict[str, Any]:
    """Platform, CPUs, memory and accelerators of this machine, and the processes of the launch."""
    import torch

    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        memory = None
    if torch.cuda.is_available():
        accelerators = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        accelerators = ["mps"]
    else:
        accelerators = []
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_gib": memory,
        "accelerators": accelerators,
        "accelerator_count": len(accelerators),
        "world_size": world_size,
    }


def data_record(datasets: Any, data_report: DataReport | None, mixture: MixtureConfig) -> dict[str, Any]:
    """Rows and fingerprint per split, sha256 and size per local data file, rows read/kept per source."""
    return {
        "splits": {
            name: {"rows": len(rows), "fingerprint": getattr(rows, "_fingerprint", None)}
            for name, rows in datasets.items()
        },
        "files": {str(path): file_digest(path) for path in data_files(mixture)},
        "sources": [
            {
                "id": s.id,
                "split": s.split,
                "role": s.role,
                "rows_read": s.rows_read,
                "rows_kept": s.rows_kept,
                "rows_trained": s.rows_trained,
            }
            for s in (data_report.sources if data_report else [])
        ],
    }


def data_files(mixture: MixtureConfig) -> list[Path]:
    """Every local file the mixture can read: sources (file, glob, folder, `data_files`) and decontamination."""
    specs = []
    for source in mixture.datasets:
        specs.append(source.id)
        files = source.data_files
        specs += (
            [files]
            if isinstance(files, str)
            else list(files.values() if isinstance(files, dict) else files or [])
        )
    specs += mixture.decontaminate
    return sorted({path for spec in specs for path in _local_files(str(spec))})


def _local_files(spec: str) -> list[Path]:
    import glob

    if any(c in spec for c in "*?["):
        return [Path(p) for p in glob.glob(str(Path(spec).expanduser()), recursive=True) if Path(p).is_file()]
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():  # a folder of split files, or a saved dataset
        return [p for p in path.rglob("*") if p.is_file()]
    return []  # a Hub id


def file_digest(path: Path) -> dict[str, Any]:
    """`{"sha256", "bytes"}` of a file, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


# --- Rerunning -------------------------------------------------------------------------------------------


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest at `path`, or a one-line RecipeError saying what is wrong with it."""
    from alignment.recipe import STAGES

    try:
        manifest = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such manifest (a run writes OUTPUT_DIR/{MANIFEST})") from None
    except (OSError, ValueError) as err:
        raise RecipeError(f"{path}: not a readable JSON manifest ({type(err).__name__}: {err})") from None
    if (
        not isinstance(manifest, dict)
        or "stage" not in manifest
        or not isinstance(manifest.get("recipe"), dict)
    ):
        raise RecipeError(f"{path}: not a run manifest (needs `stage` and a `recipe` mapping)")
    if manifest["stage"] not in STAGES:
        raise RecipeError(f"{path}: stage {manifest['stage']!r} has no script; stages: {', '.join(STAGES)}")
    return manifest


def write_rerun_recipe(manifest: dict[str, Any], folder: Path) -> Path:
    """The recorded recipe mapping as `folder/rerun_recipe.yaml`, for the stage script to read."""
    import yaml

    path = folder / RERUN_RECIPE
    header = (
        f"# The recipe recorded by {MANIFEST} ({manifest.get('recipe_path')}, {manifest.get('started')})\n"
    )
    path.write_text(header + yaml.safe_dump(manifest["recipe"], sort_keys=False, default_flow_style=False))
    return path


def rerun_differences(manifest: dict[str, Any]) -> list[str]:
    """One line per difference between the recorded and the current git commit, dirty flag and packages."""
    lines = []
    old = manifest.get("git")
    root = Path(old["root"]) if old and old.get("root") else None
    new = git_state(root) if root is not None and root.is_dir() else git_of(None)
    for key in ("commit", "dirty"):
        was, is_ = (old or {}).get(key), (new or {}).get(key)
        if was != is_:
            where = f" of {new['root']}" if new else " (no git repository here)"
            lines.append(f"git {key} differs: recorded {was}, now {is_}{where}")
    recorded = manifest.get("packages") or {}
    installed = package_versions(tuple(k for k in recorded if k != "python"))
    for name in sorted(recorded):
        if recorded[name] != installed.get(name):
            lines.append(f"{name} differs: recorded {recorded[name]}, installed {installed.get(name)}")
    return lines


def rerun(
    manifest_path: str,
    extra: list[str] | None = None,
    accelerate_config: str | None = None,
    num_processes: int | None = None,
) -> int:
    """Repeat the run `manifest_path` records; return the stage's exit status.

    The recorded recipe mapping is written to `rerun_recipe.yaml` in a new temporary folder (removed when
    the stage ends), not beside the manifest: the run's folder stays as the run left it (it may be
    read-only, a download, or deleted mid-rerun by `--overwrite_output_dir true`, which would take the
    recipe file the model card reads with it), and the rerun records the same mapping in its own
    manifest. The stage runs as `alignment <stage>` does, from the current folder (where the recipe's
    relative paths are read), with the recorded overrides, then `extra`, and the recorded world size as
    `--num_processes` when it was above 1.
    """
    from alignment.launch import run_stage
    from alignment.secrets import redact

    manifest = read_manifest(manifest_path)
    for line in rerun_notes(manifest, accelerate_config):
        logger.warning(redact(f"rerun: {line}"))
    world = int((manifest.get("hardware") or {}).get("world_size") or 1)
    if num_processes is None and world > 1:
        num_processes = world
    with tempfile.TemporaryDirectory(prefix="alignment-rerun-") as folder:
        recipe = write_rerun_recipe(manifest, Path(folder))
        overrides = [*manifest.get("overrides", []), *(extra or [])]
        done = run_stage(
            manifest["stage"],
            str(recipe),
            overrides,
            accelerate_config=accelerate_config,
            num_processes=num_processes,
        )
    return done.returncode


def rerun_notes(manifest: dict[str, Any], accelerate_config: str | None = None) -> list[str]:
    """The warnings a rerun starts with: credentials taken from here, code and launch differences."""
    notes = []
    removed = manifest.get("credentials_removed") or []
    if removed:
        notes.append(
            f"credentials not recorded ({', '.join(removed)}) are taken from this environment at rerun time "
            "(hub_token: HF_TOKEN)"
        )
    notes += rerun_differences(manifest)
    command = manifest.get("command") or {}
    if command.get("cwd") and Path(command["cwd"]).resolve() != Path.cwd().resolve():
        notes.append(f"recorded in {command['cwd']}: the recipe's relative paths are read from here instead")
    env = command.get("env") or {}
    if accelerate_config is None and any(
        env.get(k, "false").lower() == "true" for k in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP")
    ):
        notes.append(
            "the run was launched with DeepSpeed or FSDP "
            f"({', '.join(f'{k}={v}' for k, v in sorted(env.items()) if k.startswith('ACCELERATE_'))}): "
            "pass --accelerate_config FILE to launch it the same way"
        )
    return notes
