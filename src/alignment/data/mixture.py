"""Dataset mixtures: which sources, how much of each, and which rows are kept apart for evaluation.

TRL's `DatasetMixtureConfig`/`get_dataset` cover loading and concatenating Hub datasets; what they
lack and this module adds: local files and saved folders as sources, a per-source fraction taken
after a seeded shuffle (TRL keeps the first rows), eval sets from each source's own test split
rather than a re-split of the merged training rows, and a log line per source of rows kept.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.errors import RecipeError, closest

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


@dataclass
class DatasetSource:
    """One source of a mixture: a Hub id, a local data file (json/jsonl/parquet/csv) or a local folder."""

    id: str
    config: str | None = None
    split: str = "train"
    columns: list[str] | None = None
    weight: float = 1.0  # fraction of this source's rows, taken after a seeded shuffle
    data_files: str | list[str] | dict[str, str] | None = None  # for a builder id such as `json`
    data_dir: str | None = None


@dataclass
class MixtureConfig:
    """A recipe's `dataset_mixture`."""

    datasets: list[DatasetSource] = field(default_factory=list)
    seed: int = 0
    test_split: str | None = None  # each source's split of this name becomes the eval set
    test_split_size: float | int | None = None  # or carve the eval set out of the mixed training rows

    @classmethod
    def from_dict(cls, raw: Any, origin: str = "recipe") -> MixtureConfig:
        """Build from the YAML mapping, naming the key at fault for anything malformed."""
        if not isinstance(raw, dict):
            raise RecipeError(f"{origin}: `dataset_mixture` must be a mapping with a `datasets` list")
        _reject_unknown(raw, cls, origin, "dataset_mixture")
        sources = raw.get("datasets")
        if not isinstance(sources, list) or not sources:
            raise RecipeError(f"{origin}: `dataset_mixture.datasets` must be a non-empty list of sources")
        parsed = []
        for i, source in enumerate(sources):
            where = f"dataset_mixture.datasets[{i}]"
            if not isinstance(source, dict) or not source.get("id"):
                raise RecipeError(f"{origin}: `{where}` needs an `id` (Hub id or local path)")
            _reject_unknown(source, DatasetSource, origin, where)
            weight = source.get("weight", 1.0)
            if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0 < weight <= 1:
                raise RecipeError(
                    f"{origin}: `{where}.weight` is {weight!r}; it must be a fraction in (0, 1]"
                )
            columns = source.get("columns")
            if columns is not None and (
                not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
            ):
                raise RecipeError(f"{origin}: `{where}.columns` must be a list of column names")
            parsed.append(DatasetSource(**{**source, "id": str(source["id"]), "weight": float(weight)}))
        size = raw.get("test_split_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int | float) or size <= 0:
                raise RecipeError(
                    f"{origin}: `dataset_mixture.test_split_size` is {size!r}; use a fraction or a count"
                )
            if isinstance(size, float) and size >= 1:
                raise RecipeError(
                    f"{origin}: `dataset_mixture.test_split_size` {size} is a fraction, so below 1"
                )
        if size is not None and raw.get("test_split"):
            raise RecipeError(
                f"{origin}: set one of `dataset_mixture.test_split` and `test_split_size`, not both"
            )
        seed = raw.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise RecipeError(f"{origin}: `dataset_mixture.seed` must be an integer")
        return cls(datasets=parsed, seed=seed, test_split=raw.get("test_split"), test_split_size=size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _reject_unknown(raw: dict, cls: type, origin: str, where: str) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in valid:
            hint = closest(key, valid) or f"; valid keys: {', '.join(sorted(valid))}"
            raise RecipeError(f"{origin}: unknown key `{where}.{key}`{hint}")


def is_local(source_id: str) -> bool:
    """A Hub id is `name` or `org/name`; anything else that looks like a path is a local source."""
    return (
        Path(source_id).exists()
        or source_id.startswith(("./", "../", "/", "~"))
        or source_id.count("/") >= 2
        or Path(source_id).suffix in FILE_BUILDERS
    )


def load_source(source: DatasetSource, split: str) -> Dataset:
    """Load one split of one source, keeping only its `columns` when it names them."""
    rows = _read_split(source, split)
    if source.columns is None:
        return rows
    missing = [c for c in source.columns if c not in rows.column_names]
    if missing:
        raise RecipeError(
            f"dataset {source.id}: no column {missing[0]!r} (has {', '.join(rows.column_names)})"
        )
    return rows.select_columns(source.columns)


def _read_split(source: DatasetSource, split: str) -> Dataset:
    """One split of one source, from a local file, a local folder or the Hub."""
    import datasets

    path = Path(source.id).expanduser()
    if is_local(source.id) and not path.exists():
        raise RecipeError(f"dataset not found: {source.id} (a local path; build it or fix `id`)")
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise RecipeError(
                f"dataset file {source.id}: unsupported type; use one of {', '.join(FILE_BUILDERS)}"
            )
        if split != "train":
            raise RecipeError(f"dataset file {source.id} has only a `train` split, not {split!r}")
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if path.is_dir() and (path / "dataset_dict.json").exists():
        saved = datasets.load_from_disk(str(path))
        if split not in saved:
            raise RecipeError(f"dataset {source.id} has no split {split!r} (has {', '.join(saved)})")
        return saved[split]
    if path.is_dir() and (path / "state.json").exists():
        if split != "train":
            raise RecipeError(f"dataset {source.id} is a single saved split; it has no split {split!r}")
        return datasets.load_from_disk(str(path))
    try:
        return datasets.load_dataset(
            source.id, name=source.config, split=split, data_files=source.data_files, data_dir=source.data_dir
        )
    except ValueError as err:
        if "split" in str(err).lower():
            raise RecipeError(f"dataset {source.id} has no split {split!r} ({err})") from None
        raise


def load_mixture(mixture: MixtureConfig) -> DatasetDict:
    """Load, subsample and concatenate the sources; return `train` (and `test` when an eval set is asked for)."""
    import datasets

    train_parts, test_parts = [], []
    for source in mixture.datasets:
        rows = load_source(source, source.split)
        total = len(rows)
        if source.weight < 1:
            rows = rows.shuffle(seed=mixture.seed).select(range(round(total * source.weight)))
        logger.info(
            f"dataset {source.id} [{source.split}]: kept {len(rows)} of {total} rows (weight {source.weight})"
        )
        train_parts.append(rows)
        if mixture.test_split:
            test = load_source(source, mixture.test_split)
            logger.info(f"dataset {source.id} [{mixture.test_split}]: {len(test)} eval rows")
            test_parts.append(test)
    try:
        train = datasets.concatenate_datasets(train_parts)
    except ValueError as err:
        raise RecipeError(f"dataset_mixture: sources have different columns or types ({err})") from None
    if mixture.test_split_size is not None:
        split = train.train_test_split(test_size=mixture.test_split_size, seed=mixture.seed)
        logger.info(
            f"mixture: {len(split['train'])} train rows, {len(split['test'])} eval rows (test_split_size)"
        )
        return split
    out = {"train": train}
    if test_parts:
        out["test"] = datasets.concatenate_datasets(test_parts)
    return datasets.DatasetDict(out)
