"""The dry run's look at a recipe's data: every local split the recipe names, read to its first rows only.

`--dry_run` and `alignment check` answer in seconds and load no model, yet a recipe that fails usually
fails on its data: a path that is not there, a split a folder does not have, a column named wrong,
rows of another stage, a line that is not JSON. `datasets.load_dataset` converts a whole local file
to Arrow before the first row can be looked at, so this module reads the first rows itself (standard
library and pyarrow, as `datasets` would read them) and hands them to the functions the run uses
(data/sources.py, formats.py, validation.py, mixture.py): the dry run refuses with the run's own
error line. A fault beyond the first rows (an invalid row at line 200) is the run's to find. Hub
datasets are not read: a note says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.data.mixture import check_replay, column_plan, invalid_rows_message, source_stage
from alignment.data.sources import (
    DatasetSource,
    _first_line,
    check_file,
    check_headerless,
    check_not_empty,
    diagnose_file,
    is_local,
    json_rows,
    load_saved,
    not_utf8,
    read_csv,
    read_headerless,
    slice_bounds,
    split_files,
    split_name,
)
from alignment.errors import RecipeError

if TYPE_CHECKING:
    from alignment.data.mixture import MixtureConfig

PROBE_ROWS = 32  # enough to meet a wrong format or a systematic fault; few enough to read in milliseconds


@dataclass
class Head:
    """The first rows of one split of one source, and its columns."""

    columns: list[str]
    rows: list[dict]


def probe_mixture(mixture: MixtureConfig, stage: str, rows: int = PROBE_ROWS) -> list[str]:
    """Check the first `rows` rows of every local split `mixture` names for `stage`; return notes.

    Raises the run's RecipeError for the first fault, in the order the run meets them (each source's
    test split, then each source's training split, then the `decontaminate` files).
    """
    check_replay(mixture, stage)
    notes: list[str] = []
    splits = [(s, mixture.test_split) for s in mixture.datasets] if mixture.test_split else []
    for source, split in splits + [(s, s.split) for s in mixture.datasets]:
        for note in probe_source(source, split, source_stage(source, stage), rows):
            notes += [] if note in notes else [note]
    for path in mixture.decontaminate:
        try:
            with open(path, "rb") as f:  # read whole by the run; here, only found
                f.read(1)
        except OSError as e:  # the run's own message (curation.read_eval_prompts)
            raise RecipeError(f"{path}: cannot read evaluation prompts ({e.strerror or e})") from None
    return notes


def probe_source(source: DatasetSource, split: str, stage: str, rows: int = PROBE_ROWS) -> list[str]:
    """Read, convert and validate the first `rows` rows of one local split as the run does; return notes."""
    from alignment.data.formats import RoleTags, check_format, convert_batch, detect_format

    if source.data_files is not None:  # a builder (`json`, a Hub script) given files: `datasets` reads them
        return [f"dataset {source.label}: read through `data_files`, not by a dry run"]
    if not is_local(source.id):
        return [f"dataset {source.label}: on the Hub, not read by a dry run"]
    head = read_head(source, split, rows)
    if not head.rows:
        raise RecipeError(f"dataset {source.label} [{split}]: no rows")
    kept, renames = column_plan(source, head.columns)
    batch = {renames.get(c, c): [row.get(c) for row in head.rows] for c in kept}
    origin = f"dataset {source.label}"
    if source.format is not None:
        check_format(source.format, list(batch), stage, origin)
        fmt = source.format
    else:
        fmt = detect_format(list(batch), {c: values[0] for c, values in batch.items()}, stage, origin)
    tags = RoleTags.from_dict(source.tags, origin) if source.tags else None
    reasons = convert_batch(batch, fmt=fmt, stage=stage, tags=tags)["invalid"]
    bad = [reason for reason in reasons if reason]
    if bad and source.on_invalid == "error":
        raise RecipeError(invalid_rows_message(source, split, reasons, f"the first {len(reasons)}"))
    if bad:
        return [
            f"dataset {source.label} [{split}]: {len(bad)} of the first {len(reasons)} rows invalid "
            f"({', '.join(sorted(set(bad)))}); `on_invalid: drop` drops and counts them"
        ]
    return []


def read_head(source: DatasetSource, split: str, rows: int = PROBE_ROWS) -> Head:
    """The first `rows` rows of a local split (of its slice), the split's files found as the run finds them.

    Every file of the split is checked (not empty, its first rows parse). A sliced split is counted
    first, so that its bounds resolve as in the run: Parquet and saved datasets from their metadata,
    text files by reading them through (the only case where a dry run reads past the first rows).
    """
    name = split_name(split)
    files = split_files(source, name)
    check_headerless(source, files)
    names = source.column_names
    if not files:  # a saved dataset: memory-mapped, so its first rows cost no more than a file's
        saved = load_saved(source, name)
        start, end = slice_bounds(split, len(saved), source.id)
        return Head(saved.column_names, saved.select(range(start, min(end, start + rows))).to_list())
    for file in files:
        check_not_empty(file)
    firsts = [_read(file, 0, rows, names) for file in files]
    if "[" not in split:
        # a file with fewer than `rows` rows was read to its end: the chain is the split's first rows
        head = list(islice(chain.from_iterable(firsts), rows))
    else:
        counts = [_count_rows(file, names) for file in files]
        start, end = slice_bounds(split, sum(counts), source.id)
        wanted = min(rows, end - start)
        head = []
        for file, count in zip(files, counts, strict=True):
            if start < count and len(head) < wanted:
                head += _read(file, start, wanted - len(head), names)
            start = max(0, start - count)
    return Head(names or _columns(files[0], head), head)


# --- One file ------------------------------------------------------------------------------------------


def _read(file: Path, skip: int, take: int | None, column_names: list[str] | None = None) -> list[dict]:
    """Rows `skip` to `skip + take` (to the end: None) of one file; errors name file:line as the run's do.

    `column_names`: the file has no header row; these are its fields (a source's `column_names`).
    """
    end = None if take is None else skip + take
    suffix = file.suffix
    if column_names:
        return read_headerless(file, column_names, (line for _, line in _text_lines(file)), limit=end)[skip:]
    if suffix in (".json", ".jsonl") and _first_char(file) == "[":
        check_file(file)  # JSON has no "first rows" of an array: it is parsed whole, as the run does
        try:
            rows = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            rows = None
        if isinstance(rows, list) and rows and isinstance(rows[0], str):  # `datasets`: a list of texts
            return [{"text": text} for text in rows[skip:end]]
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            diagnose_file(file)  # raises the run's message, naming the line or the row
        return rows[skip:end]
    if suffix in (".json", ".jsonl"):
        return list(islice(_json_lines(file), skip, end))
    if suffix in (".csv", ".tsv"):
        return read_csv(file, (line for _, line in _text_lines(file)), limit=end)[1][skip:]
    if suffix == ".txt":  # `datasets`' text builder: one row per line, blank lines included
        lines = islice(_text_lines(file, blank_ok=True), skip, end)
        return [{"text": line.rstrip("\r\n")} for _, line in lines]
    reader = _parquet_rows if suffix == ".parquet" else _arrow_rows
    return list(islice(reader(file, skip), take))


def _first_char(file: Path) -> str:
    with file.open("rb") as f:
        return f.read(256).lstrip()[:1].decode("latin-1")


def _lines(file: Path) -> Iterator[tuple[int, bytes]]:
    with file.open("rb") as f:
        yield from enumerate(f, start=1)


def _decode(file: Path, number: int, raw: bytes) -> str:
    """One line as text; not UTF-8 is refused as the run's full check refuses it (check_file)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        cut = not raw.endswith(b"\n") and err.reason == "unexpected end of data"
        raise not_utf8(file, number, cut=cut) from None


def _text_lines(file: Path, blank_ok: bool = False) -> Iterator[tuple[int, str]]:
    """(number, text) of each line; a file of whitespace alone has no rows (the run's diagnose_file)."""
    seen_text = False
    for number, raw in _lines(file):
        line = _decode(file, number, raw)
        seen_text = seen_text or bool(line.strip())
        yield number, line
    if not seen_text and not blank_ok:
        raise RecipeError(f"{file}: the file has no rows (only whitespace)")


def _json_lines(file: Path) -> Iterator[dict]:
    return json_rows(file, _text_lines(file))


def _rows_after(batches: Iterable[Any], skip: int) -> Iterator[dict]:
    """The rows of Arrow record `batches` after the first `skip`, converting only the batches read."""
    for batch in batches:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        yield from batch.slice(skip).to_pylist()
        skip = 0


def _parquet_rows(file: Path, skip: int) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        yield from _rows_after(pq.ParquetFile(file).iter_batches(batch_size=256), skip)
    except RecipeError:
        raise
    except Exception as err:  # pyarrow's ArrowInvalid, OSError: not a Parquet file
        raise RecipeError(f"{file}: not a readable Parquet file ({_first_line(err)})") from None


def _arrow_rows(file: Path, skip: int) -> Iterator[dict]:
    """Arrow IPC, stream or file, the two `datasets`' arrow builder reads."""
    import pyarrow as pa

    try:
        with file.open("rb") as f:
            try:
                batches = iter(pa.ipc.open_stream(f))
            except (OSError, pa.lib.ArrowInvalid):
                reader = pa.ipc.open_file(f)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            yield from _rows_after(batches, skip)
    except Exception as err:
        raise RecipeError(f"{file}: not a readable Arrow file ({_first_line(err)})") from None


def _count_rows(file: Path, column_names: list[str] | None = None) -> int:
    """Rows of one file, to resolve a slice: Parquet from its metadata, text files by reading them."""
    if column_names:
        return len(_read(file, 0, None, column_names))
    if file.suffix in (".json", ".jsonl") and _first_char(file) != "[":
        return sum(1 for _ in _json_lines(file))
    if file.suffix == ".txt":
        return sum(1 for _ in _lines(file))
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(file).metadata.num_rows
    return len(_read(file, 0, None))


def _columns(file: Path, rows: list[dict]) -> list[str]:
    """The split's columns: the file's own header or schema, else every key of the rows read, in order."""
    if file.suffix in (".csv", ".tsv"):
        return read_csv(file, (line for _, line in _text_lines(file)), limit=0)[0]
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(file).schema_arrow.names)
    return list(dict.fromkeys(key for row in rows for key in row))
