"""Dataset mixtures: read each source, convert it to its stage's rows, check, curate, weigh, mix.

TRL's `DatasetMixtureConfig`/`get_dataset` load and concatenate Hub datasets with a share of each.
What they lack and this module adds: local files, globs and saved folders as sources; a format reader
per source (data/formats.py) so that ShareGPT, Alpaca, HH-RLHF, ... become the stage's canonical rows;
row validation before any model loads; exact or MinHash deduplication and n-gram decontamination
against the eval sets; a per-source weight taken after a seeded shuffle (TRL keeps the first rows) or
an exact `samples` count; eval sets from each source's own test split; and a count of every row on
the way (data/report.py). In an sft mixture a `format: text` source is replay: its plain text is read
as cpt rows and mixed in beside the conversations (data/replay.py tokenises the two kinds for TRL).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from alignment.data.cache import fresh_map
from alignment.data.report import SourceReport
from alignment.data.sources import DatasetSource, is_local, read_source
from alignment.data.validation import NO_PREFERENCE
from alignment.errors import RecipeError, closest

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

__all__ = ["DatasetSource", "MixtureConfig", "build_mixture", "is_local", "load_mixture"]

DEDUP_MODES = ("exact", "minhash", "none")
ON_INVALID = ("error", "drop")
SOURCE_COLUMN = "_source"  # which source a mixed row came from, for per-source length counts


@dataclass
class MixtureConfig:
    """A recipe's `dataset_mixture`."""

    datasets: list[DatasetSource] = field(default_factory=list)
    seed: int = 0
    test_split: str | None = None  # each source's split of this name becomes the eval set
    test_split_size: float | int | None = None  # or carve the eval set out of the mixed training rows
    dedup: str = "exact"  # exact | minhash | none, for every source that does not set its own
    decontaminate: list[str] = field(
        default_factory=list
    )  # JSONL files of eval prompts, beside the test split
    decontaminate_ngram: int = 13  # GPT-3's and open-instruct's n

    @classmethod
    def from_dict(cls, raw: Any, origin: str = "recipe") -> MixtureConfig:
        """Build from the YAML mapping, naming the key at fault for anything malformed."""
        if not isinstance(raw, dict):
            raise RecipeError(f"{origin}: `dataset_mixture` must be a mapping with a `datasets` list")
        _reject_unknown(raw, cls, origin, "dataset_mixture")
        sources = raw.get("datasets")
        if not isinstance(sources, list) or not sources:
            raise RecipeError(f"{origin}: `dataset_mixture.datasets` must be a non-empty list of sources")
        parsed = [
            _parse_source(source, origin, f"dataset_mixture.datasets[{i}]")
            for i, source in enumerate(sources)
        ]
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
        dedup = raw.get("dedup", "exact")
        _require(dedup, DEDUP_MODES, origin, "dataset_mixture.dedup")
        decontaminate = raw.get("decontaminate") or []
        if isinstance(decontaminate, str):
            decontaminate = [decontaminate]
        if not isinstance(decontaminate, list) or not all(isinstance(p, str) for p in decontaminate):
            raise RecipeError(f"{origin}: `dataset_mixture.decontaminate` must be a list of JSONL file paths")
        ngram = raw.get("decontaminate_ngram", 13)
        if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
            raise RecipeError(
                f"{origin}: `dataset_mixture.decontaminate_ngram` is {ngram!r}; it must be a positive integer"
            )
        return cls(
            datasets=parsed,
            seed=seed,
            test_split=raw.get("test_split"),
            test_split_size=size,
            dedup=dedup,
            decontaminate=decontaminate,
            decontaminate_ngram=ngram,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_source(source: Any, origin: str, where: str) -> DatasetSource:
    if not isinstance(source, dict) or not source.get("id"):
        raise RecipeError(f"{origin}: `{where}` needs an `id` (Hub id, local file, glob or folder)")
    _reject_unknown(source, DatasetSource, origin, where)
    weight, samples = source.get("weight"), source.get("samples")
    if weight is not None and samples is not None:
        raise RecipeError(f"{origin}: `{where}` sets both `weight` and `samples`; choose one")
    if weight is not None and (
        isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0
    ):
        raise RecipeError(
            f"{origin}: `{where}.weight` is {weight!r}; it must be a number above 0 "
            "(a fraction of the rows; above 1 repeats rows)"
        )
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise RecipeError(f"{origin}: `{where}.samples` is {samples!r}; it must be a positive row count")
    columns = source.get("columns")
    if columns is not None:
        as_list = isinstance(columns, list) and all(isinstance(c, str) for c in columns)
        as_map = isinstance(columns, dict) and all(isinstance(v, str) for v in columns.values())
        if not (as_list or as_map):
            raise RecipeError(
                f"{origin}: `{where}.columns` must be a list of column names or a mapping "
                "{reader's name: file's column}, e.g. {messages: conversations}"
            )
    names = source.get("column_names")
    if names is not None and not (
        isinstance(names, list)
        and names
        and all(isinstance(c, str) and c for c in names)
        and len(set(names)) == len(names)
    ):
        raise RecipeError(
            f"{origin}: `{where}.column_names` must be a list of distinct column names, the fields of a "
            "file with no header row in order, e.g. [label, text]"
        )
    tags = source.get("tags")
    if tags is not None:
        from alignment.data.formats import RoleTags

        try:
            RoleTags.from_dict(tags, where)  # raises naming an unknown tag key
        except RecipeError as err:
            raise RecipeError(f"{origin}: {err}") from None
    if source.get("format") is not None:
        from alignment.data.formats import FORMATS

        _require(source["format"], tuple(FORMATS), origin, f"{where}.format")
    _require(source.get("on_invalid", "error"), ON_INVALID, origin, f"{where}.on_invalid")
    if source.get("dedup") is not None:
        _require(source["dedup"], DEDUP_MODES, origin, f"{where}.dedup")
    if not isinstance(source.get("split", "train"), str):
        raise RecipeError(f"{origin}: `{where}.split` must be a split name such as train or train[:10%]")
    values = {**source, "id": str(source["id"])}
    if weight is not None:
        values["weight"] = float(weight)
    return DatasetSource(**values)


def source_stage(source: DatasetSource, stage: str) -> str:
    """The row shape `source` is read in: `stage`'s, or cpt for a plain-text replay source of an sft mixture."""
    from alignment.data.formats import REPLAY_STAGES

    return "cpt" if stage in REPLAY_STAGES and source.format == "text" else stage


def has_replay(mixture: MixtureConfig, stage: str) -> bool:
    """Whether the mixture mixes plain-text replay rows into `stage`'s rows."""
    return any(source_stage(source, stage) != stage for source in mixture.datasets)


def check_replay(mixture: MixtureConfig, stage: str) -> None:
    """Refuse an sft mixture of replay sources alone: it would be continued pretraining, unpacked."""
    if has_replay(mixture, stage) and all(source_stage(s, stage) != stage for s in mixture.datasets):
        raise RecipeError(
            "dataset_mixture: every source is plain text (`format: text`), so this sft stage has no "
            "conversations to learn from; add a conversation source, or train the text with the cpt stage"
        )


def _require(value: Any, choices: tuple[str, ...], origin: str, key: str) -> None:
    if value not in choices:
        raise RecipeError(
            f"{origin}: `{key}` is {value!r}; choose one of {', '.join(choices)}{closest(str(value), choices)}"
        )


def _reject_unknown(raw: dict, cls: type, origin: str, where: str) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in valid:
            hint = closest(key, valid) or f"; valid keys: {', '.join(sorted(valid))}"
            raise RecipeError(f"{origin}: unknown key `{where}.{key}`{hint}")


# --- Building ------------------------------------------------------------------------------------------


def load_source(source: DatasetSource, split: str) -> Dataset:
    """One split of one source with its `columns` applied: kept (a list) or renamed (a mapping)."""
    rows = read_source(source, split)
    if len(rows) == 0:
        raise RecipeError(f"dataset {source.label} [{split}]: no rows")
    if source.columns is None:
        return rows
    kept, renames = column_plan(source, rows.column_names)
    if isinstance(source.columns, list):
        return rows.select_columns(kept)
    rows = rows.remove_columns([c for c in rows.column_names if c not in kept])
    return rows.rename_columns(renames)


def column_plan(source: DatasetSource, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the file's columns kept, {file's name: ours}) for the source's `columns`; raises naming a missing one.

    A list keeps those columns; a mapping renames, and drops a column that already has one of our names
    (the mapping says which column plays that part).
    """
    columns = source.columns or list(names)
    wanted = list(columns.values()) if isinstance(columns, dict) else columns
    missing = [c for c in wanted if c not in names]
    if missing:
        raise RecipeError(f"dataset {source.label}: no column {missing[0]!r} (has {', '.join(names)})")
    if isinstance(columns, list):
        return list(columns), {}
    renames = {file_name: ours for ours, file_name in columns.items() if file_name != ours}
    clashes = [ours for ours in renames.values() if ours in names and ours not in renames]
    return [c for c in names if c not in clashes], renames


def _convert(
    rows: Dataset, source: DatasetSource, split: str, stage: str, num_proc: int | None
) -> tuple[Dataset, str]:
    from alignment.data.formats import (
        RoleTags,
        canonical_features,
        check_format,
        convert_batch,
        detect_format,
    )

    origin = f"dataset {source.label}"
    if source.format is not None:
        check_format(source.format, rows.column_names, stage, origin)
        fmt = source.format
    else:
        fmt = detect_format(rows.column_names, rows[0], stage, origin)
    tags = RoleTags.from_dict(source.tags, origin) if source.tags else None
    # Messages are stored as JSON (datasets' `Json`): a message reads back with exactly its own keys
    # (tool_calls only where a tool is called), and batches and sources with and without tool calls
    # share one schema. classify labels keep the file's type (str or int).
    features = (
        None if stage == "classify" else canonical_features(stage, tool_calls=False, json_messages=True)
    )
    converted = fresh_map(
        rows,
        convert_batch,
        batched=True,
        features=features,
        fn_kwargs={"fmt": fmt, "stage": stage, "tags": tags},
        remove_columns=rows.column_names,
        num_proc=num_proc,
        desc=f"Converting {source.label} [{split}] ({fmt})",
    )
    if stage == "classify" and getattr(converted.features.get("label"), "dtype", "").startswith("float"):
        # A csv label column with a blank field reads as floats; `datasets` keeps the input's type for
        # the output column, so the whole numbers the reader made of them (`_class_label`) are cast back.
        from datasets import Value

        converted = converted.cast_column("label", Value("int64"))
    return converted, fmt


def _drop_invalid(rows: Dataset, source: DatasetSource, split: str, report: SourceReport) -> Dataset:
    """Count invalid rows per reason; stop on them (`on_invalid: error`) or drop them (`drop`).

    An arena tie (NO_PREFERENCE) is not a fault of the file: such rows are always dropped, and counted."""
    reasons = rows.data.column("invalid").to_pylist()
    bad = [i for i, reason in enumerate(reasons) if reason]
    report.invalid = dict(Counter(reasons[i] for i in bad))
    faults = [reason if reason != NO_PREFERENCE else "" for reason in reasons]
    if any(faults) and source.on_invalid == "error":
        raise RecipeError(invalid_rows_message(source, split, faults, str(len(rows))))
    if bad:
        rows = rows.select([i for i, reason in enumerate(reasons) if not reason])
    return rows.remove_columns("invalid")


def invalid_rows_message(source: DatasetSource, split: str, reasons: list[str], of: str) -> str:
    """`dataset X [split]: N invalid row(s) of {of}: file:row: reason; ...`, the first three named.

    file:row for a whole file (row = line of a JSON Lines file); a slice's rows count from its start; a
    csv/tsv file with a header row says `row N` (its Nth record, on line N+1 unless a field spans lines),
    since `file:N` would read as a line number one short.
    """
    bad = [i for i, reason in enumerate(reasons) if reason]
    headed = source.id.endswith((".csv", ".tsv")) and not source.column_names
    where = (
        (lambda i: f"{source.id} [{split}] row {i + 1}")
        if "[" in split
        else (lambda i: f"{source.id} row {i + 1}")
        if headed
        else (lambda i: f"{source.id}:{i + 1}")
    )
    first = "; ".join(f"{where(i)}: {reasons[i]}" for i in bad[:3])
    return (
        f"dataset {source.label} [{split}]: {len(bad)} invalid row(s) of {of}: {first}"
        f"{' ...' if len(bad) > 3 else ''} (fix them, or set `on_invalid: drop` on this source to drop and count them)"
    )


def _curate(rows: Dataset, stage: str, mode: str, seen: Any, num_proc: int | None) -> tuple[Dataset, int]:
    """Drop duplicates (against every earlier source of the split too); return the rows and the count."""
    from alignment.data.curation import ExactDeduplicator, NearDeduplicator, dedup_keys, row_text, rows_of

    if mode == "none" or len(rows) == 0:
        return rows, 0
    if mode == "exact":
        keys = fresh_map(rows, dedup_keys, batched=True, fn_kwargs={"stage": stage}, num_proc=num_proc,
                        desc="Hashing rows for deduplication")  # fmt: skip
        keep = seen.setdefault("exact", ExactDeduplicator()).keep_mask(
            keys.data.column("_dedup_key").to_pylist()
        )
    else:  # MinHash-LSH is sequential: each row is checked against the rows kept before it
        index = seen.setdefault("minhash", NearDeduplicator())
        keep = []
        for start in range(0, len(rows), 10_000):
            batch = rows[start : start + 10_000]
            keep += index.keep_mask([row_text(row, stage) for row in rows_of(batch)])
    dropped = len(keep) - sum(keep)
    if dropped:
        rows = rows.select([i for i, k in enumerate(keep) if k])
    return rows, dropped


def _contamination_batch(batch: dict[str, list], *, stage: str, ngrams: Any, eval_keys: set[str]) -> dict:
    """Batched: a training row is contaminated when it shares an n-gram with an eval prompt or equals an eval row."""
    from alignment.data.curation import dedup_key, eval_texts, row_text, rows_of

    rows = rows_of(batch)
    texts = [row_text(row, stage) for row in rows]
    hit = (
        ngrams.contaminated_mask(texts, eval_texts(rows, stage))
        if ngrams is not None
        else [False] * len(texts)
    )
    if eval_keys:
        hit = [h or dedup_key(text) in eval_keys for h, text in zip(hit, texts, strict=True)]
    return {"_contaminated": hit}


def _decontaminate(
    rows: Dataset, stage: str, ngrams: Any, eval_keys: set[str], num_proc: int | None
) -> tuple[Dataset, int]:
    if (ngrams is None and not eval_keys) or len(rows) == 0:
        return rows, 0
    marked = fresh_map(
        rows,
        _contamination_batch,
        batched=True,
        fn_kwargs={"stage": stage, "ngrams": ngrams, "eval_keys": eval_keys},
        num_proc=num_proc,
        desc="Decontaminating against the eval prompts",
    )
    hit = marked.data.column("_contaminated").to_pylist()
    dropped = sum(hit)
    if dropped:
        rows = rows.select([i for i, h in enumerate(hit) if not h])
    return rows, dropped


def _weigh(rows: Dataset, source: DatasetSource, seed: int, report: SourceReport) -> Dataset:
    """Apply `weight` or `samples`: a seeded subsample, or whole copies plus a seeded remainder."""
    total = len(rows)
    if source.samples is not None:
        wanted = source.samples
    elif source.weight is not None:
        wanted = round(total * source.weight)
    else:
        return rows
    if total == 0 or wanted == total:
        return rows
    import datasets

    if wanted < total:
        report.subsampled = total - wanted
        return rows.shuffle(seed=seed).select(range(wanted))
    copies, remainder = divmod(wanted, total)
    parts = [rows] * copies
    if remainder:
        parts.append(rows.shuffle(seed=seed).select(range(remainder)))
    report.repeated = wanted - total
    return datasets.concatenate_datasets(parts)


def _concatenate(parts: list[Dataset], sources: list[DatasetSource], split: str) -> Dataset:
    """One dataset from the sources' canonical rows (only classify labels can differ: str in one, int in another)."""
    import datasets

    first = parts[0].features
    for part, source in zip(parts[1:], sources[1:], strict=True):
        if part.features != first:
            raise RecipeError(
                f"dataset {source.label} [{split}]: its rows do not mix with {sources[0].label}'s "
                f"({part.features} vs {first}); e.g. labels are strings in one and integers in the other"
            )
    return datasets.concatenate_datasets(parts)


def build_mixture(
    mixture: MixtureConfig, stage: str, num_proc: int | None = None
) -> tuple[DatasetDict, list[SourceReport], list[str]]:
    """The canonical rows of `train` (and `test`), with a `_source` column, the per-source report and notes.

    Order per source: read -> convert -> validate -> deduplicate -> decontaminate (train only, against
    the eval rows and `decontaminate` files) -> weight/samples (train only). Eval rows are read first so
    training rows can be checked against them; they are never subsampled.
    """
    import datasets

    check_replay(mixture, stage)
    reports: list[SourceReport] = []
    notes: list[str] = []
    test_parts: list[Dataset] = []
    test_seen: dict[str, Any] = {}
    if mixture.test_split:
        for index, source in enumerate(mixture.datasets):
            rows, report = _prepare_source(
                source, mixture.test_split, stage, num_proc, test_seen, mixture, "test"
            )
            test_parts.append(rows.add_column(SOURCE_COLUMN, [index] * len(rows)))
            reports.append(report)
    ngrams = _eval_ngrams(mixture, test_parts, stage, notes)
    eval_keys = _eval_keys(test_parts, stage, num_proc)

    train_parts: list[Dataset] = []
    train_seen: dict[str, Any] = {}
    for index, source in enumerate(mixture.datasets):
        rows, report = _prepare_source(source, source.split, stage, num_proc, train_seen, mixture, "train")
        rows, report.decontaminated = _decontaminate(rows, stage, ngrams, eval_keys, num_proc)
        rows = _weigh(rows, source, mixture.seed, report)
        report.rows_kept = len(rows)
        replay = ", replay" if source_stage(source, stage) != stage else ""
        logger.info(
            f"dataset {source.label} [{source.split}] ({report.format}{replay}): kept {report.rows_kept} of "
            f"{report.rows_read} rows (invalid {sum(report.invalid.values())}, duplicates {report.duplicates}, "
            f"decontaminated {report.decontaminated}, repeated {report.repeated}, subsampled {report.subsampled})"
        )
        train_parts.append(rows.add_column(SOURCE_COLUMN, [index] * len(rows)))
        reports.append(report)

    train = _concatenate(train_parts, mixture.datasets, "train")
    _require_rows(train, "train", reports)
    if mixture.test_split_size is not None:
        split = train.train_test_split(test_size=mixture.test_split_size, seed=mixture.seed)
        logger.info(
            f"mixture: {len(split['train'])} train rows, {len(split['test'])} eval rows (test_split_size)"
        )
        notes.append(
            f"eval set: {len(split['test'])} rows carved out of the mixed training rows (test_split_size "
            f"{mixture.test_split_size}, seed {mixture.seed})"
        )
        return split, reports, notes
    out = {"train": train}
    if test_parts:
        out["test"] = _concatenate(test_parts, mixture.datasets, "test")
        _require_rows(out["test"], "test", reports)
    return datasets.DatasetDict(out), reports, notes


def _require_rows(rows: Dataset, role: str, reports: list[SourceReport]) -> None:
    """A split left with no rows after curation is refused, with where its rows went (not a late KeyError)."""
    if len(rows):
        return
    mine = [r for r in reports if r.role == role]
    read = sum(r.rows_read for r in mine)
    invalid = sum(sum(r.invalid.values()) for r in mine)
    duplicates = sum(r.duplicates for r in mine)
    contaminated = sum(r.decontaminated for r in mine)
    raise RecipeError(
        f"dataset_mixture: no {role} rows left of {read} read (invalid {invalid}, duplicates {duplicates}, "
        f"decontaminated {contaminated}); check `on_invalid`, `dedup` and `decontaminate`"
    )


def _prepare_source(
    source: DatasetSource,
    split: str,
    stage: str,
    num_proc: int | None,
    seen: dict,
    mixture: MixtureConfig,
    role: str,
) -> tuple[Dataset, SourceReport]:
    rows = load_source(source, split)
    report = SourceReport(id=source.label, split=split, format="", rows_read=len(rows), role=role)
    from alignment.data.formats import READ_COLUMNS

    columns = rows.column_names
    rows_stage = source_stage(source, stage)
    rows, report.format = _convert(rows, source, split, rows_stage, num_proc)
    report.unused_columns = [c for c in columns if c not in READ_COLUMNS[report.format]]
    rows = _drop_invalid(rows, source, split, report)
    rows, report.duplicates = _curate(rows, rows_stage, source.dedup or mixture.dedup, seen, num_proc)
    report.rows_kept = len(rows)
    if has_replay(mixture, stage):
        rows = _with_replay_columns(rows, stage, num_proc)
    return rows, report


def _with_replay_columns(rows: Dataset, stage: str, num_proc: int | None) -> Dataset:
    """Conversations and replay text in one schema, so that they mix: messages, tools and text, each row
    leaving the other kind's columns empty (`text` None, or `messages` [] and `tools` None)."""
    from datasets import Value

    from alignment.data.formats import STAGE_COLUMNS, canonical_features

    features = canonical_features(stage, tool_calls=False, invalid=False, json_messages=True)
    features["text"] = Value("string")
    widened = fresh_map(
        rows,
        _fill_other_kind,
        batched=True,
        features=features,
        num_proc=num_proc,
        desc="Mixing in replay text",
    )
    return widened.select_columns([*STAGE_COLUMNS[stage], "text"])


def _fill_other_kind(batch: dict[str, list]) -> dict[str, list]:
    """Batched: a conversation's empty `text`, or a replay text's empty `messages` and `tools`."""
    size = len(next(iter(batch.values())))
    if "messages" in batch:
        return {"text": [None] * size}
    return {"messages": [[] for _ in range(size)], "tools": [None] * size}


def _eval_keys(test_parts: list[Dataset], stage: str, num_proc: int | None) -> set[str]:
    """Exact keys of the eval rows: a training row equal to one is contaminated, however short."""
    from alignment.data.curation import dedup_keys

    keys: set[str] = set()
    for part in test_parts:
        if len(part):
            hashed = fresh_map(
                part,
                dedup_keys,
                batched=True,
                fn_kwargs={"stage": stage},
                num_proc=num_proc,
                desc="Hashing eval rows",
            )
            keys.update(hashed.data.column("_dedup_key").to_pylist())
    return keys


def _eval_ngrams(mixture: MixtureConfig, test_parts: list[Dataset], stage: str, notes: list[str]) -> Any:
    """N-grams of every eval prompt the recipe names: its test split and its `decontaminate` files."""
    from alignment.data.curation import EvalNgrams, eval_texts, read_eval_prompts

    texts: list[str] = []
    for part in test_parts:
        texts += eval_texts(part, stage)
    for path in mixture.decontaminate:
        texts += read_eval_prompts(path)
    if not texts:
        return None
    ngrams = EvalNgrams.from_texts(texts, mixture.decontaminate_ngram)
    if ngrams.too_short:
        notes.append(
            f"decontamination: {ngrams.too_short} of {len(texts)} eval prompts are shorter than "
            f"{mixture.decontaminate_ngram} words: matched only against training prompts equal to them"
        )
    return ngrams


def load_mixture(mixture: MixtureConfig, stage: str = "sft", num_proc: int | None = None) -> DatasetDict:
    """The canonical rows of `train` (and `test`), without the report. For tests and notebooks."""
    data, _, _ = build_mixture(mixture, stage, num_proc)
    return data.remove_columns(SOURCE_COLUMN)
