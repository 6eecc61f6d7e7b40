"""Recipes written for older TRL, transformers or Alignment Handbook versions, or for `trl <stage> --config`,
rewritten to today's keys and values, each change with one note for the log and the model card.

`LEGACY_KEYS` and `LEGACY_VALUES` are the one table of every legacy key and value we migrate, with the
version that changed it. TrlParser knows none of them: an old recipe fails with a list of unknown keys,
or (for deprecated aliases) trains with a FutureWarning on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignment.errors import RecipeError


@dataclass(frozen=True)
class LegacyKey:
    """A key renamed (`new`) or removed (`new` None, `why` says what replaced it)."""

    old: str
    new: str | None
    since: str  # the release that renamed or removed it
    why: str = ""
    # Deprecated aliases are still fields of today's configs, so they are migrated even though they parse.
    alias: bool = False
    # A boolean switch that became a value of `new`: true sets `new` to this, false is dropped.
    switch_to: str | None = None


@dataclass(frozen=True)
class LegacyValue:
    """A value of `key` that a release renamed."""

    key: str
    old: Any
    new: Any
    since: str
    stage: str | None = None  # only for this stage (`loss_type` means different things per stage)


LEGACY_KEYS = (
    LegacyKey("max_seq_length", "max_length", "trl 0.20"),
    LegacyKey("torch_dtype", "dtype", "transformers 4.56"),
    LegacyKey("evaluation_strategy", "eval_strategy", "transformers 4.46"),
    LegacyKey("preprocessing_num_workers", "dataset_num_proc", "alignment-handbook 0.4 (TRL's name)"),
    LegacyKey("hub_model_revision", "hub_revision", "alignment-handbook 0.4 (transformers' name)"),
    # transformers 5: a float warmup_steps below 1 is a ratio of the total steps.
    LegacyKey("warmup_ratio", "warmup_steps", "transformers 5.0"),
    LegacyKey("gradient_checkpointing", "activation_checkpointing", "transformers 5.23", alias=True),
    LegacyKey(
        "gradient_checkpointing_kwargs", "activation_checkpointing_kwargs", "transformers 5.23", alias=True
    ),
    LegacyKey(
        "use_flash_attention_2", "attn_implementation", "transformers 4.36", switch_to="flash_attention_2"
    ),
    LegacyKey(
        "max_prompt_length",
        None,
        "by trl 1.16",
        "DPO/KTO/ORPO/CPO truncate the whole sequence to `max_length` (DPO/KTO: see `truncation_mode`); "
        "there is no separate prompt limit",
    ),
    LegacyKey(
        "max_completion_length", None, "by trl 1.16", "DPO truncates the whole sequence to `max_length`"
    ),
    LegacyKey("dataset_mixer", "dataset_mixture", "alignment-handbook 0.4"),
    LegacyKey("dataset_splits", "dataset_mixture", "alignment-handbook 0.4"),
)
LEGACY_VALUES = (
    LegacyValue("packing_strategy", "ffd", "bfd", "trl 0.20"),
    LegacyValue("loss_type", "chunked_nll", "nll", "trl 1.16", stage="sft"),
)
_BY_OLD = {k.old: k for k in LEGACY_KEYS}


def _value_note(where: str, key: str, old: Any, new: Any, since: str) -> str:
    return f"legacy value {where}`{key}: {old}` migrated to `{new}` ({since})"


def migrate_value(key: str, value: Any, stage: str, notes: list[str], where: str = "") -> Any:
    """Today's spelling of `value` for `key` (a list is migrated item by item)."""
    for legacy in LEGACY_VALUES:
        if legacy.key != key or legacy.stage not in (None, stage):
            continue
        if value == legacy.old:
            notes.append(_value_note(where, key, legacy.old, legacy.new, legacy.since))
            return legacy.new
        if isinstance(value, list) and legacy.old in value:
            notes.append(_value_note(where, key, legacy.old, legacy.new, legacy.since))
            value = [legacy.new if v == legacy.old else v for v in value]
    return value


def migrate_config(config: dict[str, Any], valid: set[str], stage: str) -> tuple[dict[str, Any], list[str]]:
    """Rewrite a recipe mapping's legacy keys and values to today's, returning it and one note per change."""
    config = dict(config)
    notes: list[str] = []
    if "dataset_mixer" in config or "dataset_splits" in config:
        _migrate_dataset_mixer(config, notes)
    if "datasets" in config and "datasets" not in valid:
        _migrate_trl_datasets(config, notes)
    _drop_streaming(config)
    for legacy in LEGACY_KEYS:
        if (
            legacy.old not in config
            or (legacy.old in valid and not legacy.alias)
            or legacy.new == "dataset_mixture"
        ):
            continue
        if legacy.new is None:
            config.pop(legacy.old)
            notes.append(f"key `{legacy.old}` ignored: {legacy.why} ({legacy.since})")
            continue
        if legacy.switch_to is not None:
            if config.pop(legacy.old):
                config.setdefault(legacy.new, legacy.switch_to)
            notes.append(
                f"legacy key `{legacy.old}` migrated to `{legacy.new}: {legacy.switch_to}` ({legacy.since})"
            )
            continue
        if legacy.new in config:
            raise RecipeError(
                f"both `{legacy.old}` (legacy) and `{legacy.new}` are set; keep only `{legacy.new}`"
            )
        config[legacy.new] = config.pop(legacy.old)
        notes.append(f"legacy key `{legacy.old}` migrated to `{legacy.new}` ({legacy.since})")
    for key in list(config):
        config[key] = migrate_value(key, config[key], stage, notes)
    return config, notes


def migrate_cli(cli: list[str], valid: set[str], stage: str, notes: list[str]) -> list[str]:
    """The same renames for `--key value` / `--key=value` flags."""
    out: list[str] = []
    i = 0
    while i < len(cli):
        arg = cli[i]
        i += 1
        if not arg.startswith("--"):
            out.append(arg)
            continue
        key, eq, inline = arg[2:].partition("=")
        has_value = bool(eq) or (i < len(cli) and not cli[i].startswith("--"))
        value = inline if eq else (cli[i] if has_value else None)
        if has_value and not eq:
            i += 1
        legacy = _BY_OLD.get(key)
        if legacy is not None and legacy.new == "dataset_mixture":
            raise RecipeError(f"`--{key}` is a legacy recipe key: pass `--dataset_mixture` as JSON instead")
        if legacy is not None and (legacy.old not in valid or legacy.alias):
            if legacy.new is None:
                notes.append(f"option `--{key}` ignored: {legacy.why} ({legacy.since})")
                continue
            notes.append(f"legacy option `--{key}` migrated to `--{legacy.new}` ({legacy.since})")
            if legacy.switch_to is not None:
                if (value or "true").lower() in ("false", "0", "no"):
                    continue
                value = legacy.switch_to
            key = legacy.new
        if value is not None:
            value = migrate_value(key, value, stage, notes, where="option ")
        out += [f"--{key}", *([value] if value is not None else [])]
    return out


def _migrate_dataset_mixer(config: dict[str, Any], notes: list[str]) -> None:
    """The Handbook's `dataset_mixer: {id: weight}` + `dataset_splits` became `dataset_mixture`."""
    if "dataset_mixer" not in config:
        raise RecipeError(
            "`dataset_splits` without `dataset_mixer`: use `dataset_mixture` with `split`/`test_split`"
        )
    if "dataset_mixture" in config:
        raise RecipeError(
            "both `dataset_mixer` (legacy) and `dataset_mixture` are set; keep only `dataset_mixture`"
        )
    mixer = config.pop("dataset_mixer")
    splits = config.pop("dataset_splits", ["train", "test"])
    if not isinstance(mixer, dict):
        raise RecipeError("`dataset_mixer` must map dataset ids to weights")
    splits = [splits] if isinstance(splits, str) else list(splits)
    train = [s for s in splits if "train" in s] or splits[:1]
    test = [s for s in splits if "test" in s]
    config["dataset_mixture"] = {
        "datasets": [{"id": name, "split": train[0], "weight": weight} for name, weight in mixer.items()],
        **({"test_split": test[0]} if test else {}),
    }
    notes.append(
        "legacy keys `dataset_mixer` + `dataset_splits` migrated to `dataset_mixture` "
        f"(train split {train[0]!r}, test split {test[0] if test else None!r}; alignment-handbook 0.4)"
    )


# TRL's `DatasetConfig` field -> our `DatasetSource` field (TRL's `path`/`name` are load_dataset's names).
_TRL_SOURCE_KEYS = {"path": "id", "name": "config", "split": "split", "columns": "columns",
                    "data_files": "data_files", "data_dir": "data_dir"}  # fmt: skip


def _migrate_trl_datasets(config: dict[str, Any], notes: list[str]) -> None:
    """A `trl <stage> --config` recipe lists `datasets:` (+ `streaming`, `test_split_size`) at the top level."""
    if "dataset_mixture" in config or "dataset_name" in config:
        raise RecipeError("set one of `datasets` (TRL's list), `dataset_mixture` and `dataset_name`")
    sources = config.pop("datasets")
    if not isinstance(sources, list) or not sources:
        raise RecipeError("`datasets` must be a non-empty list of {path, name, split, columns, data_files}")
    mapped = []
    for i, source in enumerate(sources):
        if not isinstance(source, dict) or not source.get("path"):
            raise RecipeError(f"`datasets[{i}]` needs a `path` (Hub id, local path or builder like json)")
        if source.get("fraction") is not None:
            raise RecipeError(
                f"`datasets[{i}].fraction`: TRL's share-of-the-mixture is not supported; "
                "use `dataset_mixture` with `weight` (the fraction of this source's rows to keep)"
            )
        for key in source:
            if key not in _TRL_SOURCE_KEYS and key != "fraction":
                raise RecipeError(
                    f"unknown key `datasets[{i}].{key}`; TRL's keys are {', '.join(_TRL_SOURCE_KEYS)}"
                )
        mapped.append({_TRL_SOURCE_KEYS[k]: v for k, v in source.items() if k in _TRL_SOURCE_KEYS})
    mixture: dict[str, Any] = {"datasets": mapped}
    if config.get("test_split_size") is not None:
        mixture["test_split_size"] = config.pop("test_split_size")
    config.pop("test_split_size", None)
    config["dataset_mixture"] = mixture
    notes.append(f"TRL's `datasets` list ({len(mapped)} sources) mapped onto `dataset_mixture`")


def _drop_streaming(config: dict[str, Any]) -> None:
    """Accept TRL's streaming switches when off (our default); refuse them when on."""
    for key in ("dataset_streaming", "streaming"):
        if key in config:
            if config.pop(key):
                raise RecipeError(
                    f"`{key}: true` is not supported: mixtures count and sample rows, which needs the "
                    "whole dataset; set it to false (the data is then downloaded once and cached)"
                )


def legacy_table() -> list[dict[str, str]]:
    """Every migration as rows (for docs and tests)."""
    rows = [{"old": k.old, "new": k.new or f"(removed: {k.why})", "since": k.since} for k in LEGACY_KEYS]
    rows += [
        {"old": f"{v.key}: {v.old}", "new": f"{v.key}: {v.new}", "since": v.since} for v in LEGACY_VALUES
    ]
    return rows
