"""Reading one source of a mixture: a Hub dataset, a local file or glob, or a saved dataset folder.

`datasets.load_dataset` reads all of these, but a bad file ends in a `DatasetGenerationError` or a
`StopIteration` traceback that names no file or line, and a saved folder takes no split slicing
(`train[:10%]`). This module fills those two gaps: every failure becomes one line naming the file
(and the line, for JSON Lines), and slicing works the same for every kind of source.
"""

from __future__ import annotations

import glob as globbing
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.errors import RecipeError

if TYPE_CHECKING:
    from datasets import Dataset

# File suffix -> (datasets builder, builder options). `.txt` is one row per line, in a `text` column.
FILE_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".txt": ("text", {}),
    ".arrow": ("arrow", {}),
}
SPLIT_SPEC = re.compile(r"^(?P<name>[\w.-]+)(?P<slice>\[.*\])?$")


@dataclass
class DatasetSource:
    """One source of a mixture, as the recipe gives it under `dataset_mixture.datasets`."""

    id: str  # Hub id, local file, glob (`data/*.jsonl`) or saved dataset folder
    config: str | None = None
    split: str = "train"  # with slicing: `train[:10%]`, `train[100:200]`
    columns: list[str] | dict[str, str] | None = None  # keep these, or {reader's name: file's column}
    weight: float | None = None  # fraction of the valid rows; above 1 repeats rows (recorded)
    samples: int | None = None  # or an exact count of rows (repeating rows when above what the source has)
    format: str | None = None  # None: detected from the columns (see data/formats.py)
    tags: dict[str, str] | None = None  # role mapping for ShareGPT-like files (LLaMA-Factory's `tags`)
    on_invalid: str = "error"  # error | drop
    dedup: str | None = None  # exact | minhash | none; None: the mixture's setting
    data_files: str | list[str] | dict[str, str] | None = None  # for a builder id such as `json`
    data_dir: str | None = None
    column_names: list[str] | None = None  # a csv/tsv/txt file with no header row: its fields, in order

    @property
    def label(self) -> str:
        return self.id + (f" ({self.config})" if self.config else "")


def is_local(source_id: str) -> bool:
    """A Hub id is `name` or `org/name`; anything else that looks like a path is a local source."""
    return (
        Path(source_id).exists()
        or source_id.startswith(("./", "../", "/", "~"))
        or source_id.count("/") >= 2
        or Path(source_id).suffix in FILE_BUILDERS
        or any(c in source_id for c in "*?[")
    )


def split_name(split: str) -> str:
    """`train[:10%]` -> `train`."""
    match = SPLIT_SPEC.match(split.replace(" ", ""))
    if match is None:
        raise RecipeError(f"split {split!r} is not a split name with an optional slice, e.g. train[:10%]")
    return match["name"]


def read_source(source: DatasetSource, split: str) -> Dataset:
    """The rows of one split (sliced as asked) of one source, or a one-line error naming what is wrong."""
    name = split_name(split)
    files = split_files(source, name)
    check_headerless(source, files)
    if files:
        return _slice(_read_files(source.id, files, source.column_names), split, source.id)
    if is_saved_dataset(source.id):
        return _slice(load_saved(source, name), split, source.id)
    return _read_hub(source, split)


def split_files(source: DatasetSource, name: str) -> list[Path]:
    """The local files of split `name` of `source`, of one supported type; [] for a saved dataset or the Hub.

    A file or a glob holds only `train`; a folder's files belong to the split their name starts with
    (`train.jsonl`, `train-00001.jsonl`). The dry run (data/probe.py) reads the same files as the run.
    """
    if any(c in source.id for c in "*?["):
        return _train_only(source.id, _expand_glob(source.id), name)
    path = Path(source.id).expanduser()
    if is_local(source.id) and not path.exists():
        raise RecipeError(f"dataset not found: {source.id} (a local path; {_how_to_build(source.id)})")
    if path.is_file():
        return _train_only(source.id, [path], name)
    if not path.is_dir() or is_saved_dataset(source.id) or source.data_files is not None:
        return []
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in FILE_BUILDERS)
    if not files:
        raise RecipeError(
            f"dataset folder {source.id} has no data files ({', '.join(FILE_BUILDERS)}) "
            "and is no saved dataset"
        )
    by_split = [p for p in files if p.stem == name or p.stem.startswith(f"{name}-")]
    if not by_split:
        stems = sorted({p.stem.split("-")[0] for p in files})
        raise RecipeError(f"dataset {source.id} has no split {name!r} (files: {', '.join(stems)})")
    return by_split


def _how_to_build(source_id: str) -> str:
    from alignment.tiny.build import DEFAULT_DIR

    if Path(source_id).is_relative_to(DEFAULT_DIR):  # the embedded default's data: one command writes it
        return f"`alignment tiny build` writes {DEFAULT_DIR}"
    return "build it or fix `id`"


def is_saved_dataset(source_id: str) -> bool:
    """A folder written by `save_to_disk`: a DatasetDict (dataset_dict.json) or one split (state.json)."""
    path = Path(source_id).expanduser()
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_saved(source: DatasetSource, name: str) -> Dataset:
    """Split `name` of a saved dataset folder, memory-mapped (reading its first rows costs nothing more)."""
    import datasets

    path = Path(source.id).expanduser()
    if (path / "dataset_dict.json").is_file():
        saved = datasets.load_from_disk(str(path))
        if name not in saved:
            raise RecipeError(f"dataset {source.id} has no split {name!r} (has {', '.join(saved)})")
        return saved[name]
    if name != "train":
        raise RecipeError(f"dataset {source.id} is a single saved split; it has no split {name!r}")
    return datasets.load_from_disk(str(path))


def _expand_glob(pattern: str) -> list[Path]:
    files = sorted(Path(p) for p in globbing.glob(str(Path(pattern).expanduser()), recursive=True))
    files = [p for p in files if p.is_file()]
    if not files:
        raise RecipeError(f"dataset {pattern}: the pattern matches no file")
    suffixes = {p.suffix for p in files}
    if len(suffixes) > 1:
        raise RecipeError(
            f"dataset {pattern}: matches files of different types ({', '.join(sorted(suffixes))})"
        )
    return files


def _train_only(label: str, files: list[Path], name: str) -> list[Path]:
    """The files of a file or glob source, which hold only a `train` split, of a type `datasets` reads."""
    suffix = files[0].suffix
    if suffix not in FILE_BUILDERS:
        raise RecipeError(
            f"dataset file {files[0]}: unsupported type {suffix or '(none)'}; use one of {', '.join(FILE_BUILDERS)}"
        )
    if name != "train":
        raise RecipeError(f"dataset file {label} has only a `train` split, not {name!r}")
    return files


def _read_files(label: str, files: list[Path], column_names: list[str] | None = None) -> Dataset:
    """Local files of one type, through the matching `datasets` builder; checked first for a clear error.

    Files without a header row (`column_names`) are read here instead (`read_headerless`).
    """
    import datasets

    for file in files:
        check_file(file)
    if column_names:
        rows = []
        for file in files:
            with file.open(encoding="utf-8", newline="") as lines:
                rows += read_headerless(file, column_names, lines)
        return datasets.Dataset.from_list(rows)
    builder, options = FILE_BUILDERS[files[0].suffix]
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **options)
    except Exception as err:  # datasets wraps parser errors; find the file and line ourselves
        for file in files:
            diagnose_file(file)
        raise RecipeError(f"dataset {label}: could not be read ({_first_line(err)})") from None


TEXT_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".txt")


def check_file(file: Path) -> None:
    """The checks `datasets` does not make, before it builds anything.

    An empty file has no rows; invalid UTF-8 in a JSON file is read by pyarrow with no error (the
    bytes become U+FFFD), so the text would silently differ from the file.
    """
    check_not_empty(file)
    if file.suffix not in TEXT_SUFFIXES:
        return
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 1
    with file.open("rb") as f:
        while chunk := f.read(1 << 24):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise not_utf8(file, lines + chunk[: err.start].count(b"\n")) from None
            lines += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise not_utf8(file, lines, cut=True) from None


def check_not_empty(file: Path) -> None:
    if file.stat().st_size == 0:
        raise RecipeError(f"{file}: the file is empty")


def not_utf8(file: Path, line: int, cut: bool = False) -> RecipeError:
    """The error for line `line` of `file` that is not UTF-8 (`cut`: the file ends inside a character)."""
    if cut:
        return RecipeError(f"{file}:{line}: not valid UTF-8 (cut inside a character)")
    return RecipeError(f"{file}:{line}: not valid UTF-8; re-save the file as UTF-8")


def diagnose_file(file: Path) -> None:
    """Raise a one-line error naming the line of `file` that `datasets` could not parse (called on failure)."""
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise RecipeError(
            f"{file}:{line}: not valid UTF-8 (byte {err.start}); re-save the file as UTF-8"
        ) from None
    if not text.strip():
        raise RecipeError(f"{file}: the file has no rows (only whitespace)")
    if file.suffix in (".json", ".jsonl") and not text.lstrip().startswith("["):
        for _ in json_rows(file, enumerate((line + "\n" for line in text.split("\n")), start=1)):
            pass
    elif file.suffix in (".json", ".jsonl"):  # a JSON array, whatever the suffix (as `datasets` reads it)
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecipeError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from None
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            raise RecipeError(f"{file}: row {bad + 1} of the JSON list is not an object")
    elif file.suffix in (".csv", ".tsv"):
        read_csv(file, text.splitlines(keepends=True))


def json_rows(file: Path, lines: Iterable[tuple[int, str]]) -> Iterator[dict]:
    """The rows of a JSON Lines file from its (number, line) pairs, lines with their newline.

    As `datasets` reads them: blank lines skipped, an object spanning lines (pretty-printed) joined.
    A line that starts no readable object is refused naming it (`parse_json_line`).
    """
    lines = iter(lines)
    for number, line in lines:
        if not line.strip():
            continue
        text = line
        while True:
            try:
                row = json.loads(text)
                break
            except json.JSONDecodeError as err:
                cut_at_line_end = err.pos >= len(text.rstrip())
                following = next(lines, None) if cut_at_line_end else None
                if following is None:  # the line alone is no JSON either: name it
                    parse_json_line(file, number, line.rstrip("\r\n"))
                    raise
                text += following[1]
        yield row if isinstance(row, dict) else parse_json_line(file, number, json.dumps(row))


def parse_json_line(file: Path, number: int, line: str) -> dict | None:
    """The row on line `number` of a JSON Lines file (None when blank: `datasets` skips it), or its error."""
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise RecipeError(f"{file}:{number}: not valid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(row, dict):
        raise RecipeError(f"{file}:{number}: a row must be a JSON object, got {type(row).__name__}")
    return row


def read_csv(file: Path, lines: Iterable[str], limit: int | None = None) -> tuple[list[str], list[dict]]:
    """The header and (the first `limit`) rows of a csv/tsv file, as pandas reads them for `datasets`.

    An empty field is None (pandas' NaN); a column of integers, floats or True/False holds numbers or
    bools (pandas' inference, here over the rows read); a record with more fields than the header is
    refused naming its line (pandas' "Error tokenizing data" names neither the file nor, through
    `datasets`, the line). A .csv is read strictly (RFC 4180), so a quote left open is named by the
    line it opens on, where a lenient reader would take the rest of the file as one field; a .tsv is
    not, since a tab-separated text may start with a quote mark that opens no quoted field.
    """
    import csv

    reader = csv.reader(
        lines, delimiter=FILE_BUILDERS[file.suffix][1].get("sep", ","), strict=file.suffix == ".csv"
    )
    rows = []
    start = 1  # the line the record being read starts on
    try:
        header = next(reader, [])
        start = reader.line_num + 1
        for record in reader:
            if limit is not None and len(rows) >= limit:
                break
            if len(record) > len(header):
                raise RecipeError(
                    f"{file}:{reader.line_num}: {len(record)} fields, but the header has {len(header)}"
                )
            if record:  # pandas skips blank lines
                rows.append({c: (v if v != "" else None) for c, v in zip(header, record, strict=False)})
            start = reader.line_num + 1
    except csv.Error as err:
        if "unexpected end of data" in str(err):
            raise RecipeError(f"{file}:{start}: a quoted field opened on this line is never closed") from None
        raise RecipeError(f"{file}:{reader.line_num}: not valid {file.suffix[1:]} ({err})") from None
    for column in header:
        convert = _pandas_type([row.get(column) for row in rows if row.get(column) is not None])
        for row in rows:
            if row.get(column) is not None:
                row[column] = convert(row[column])
    return header, rows


HEADERLESS_SUFFIXES = (".csv", ".tsv", ".txt")


def check_headerless(source: DatasetSource, files: list[Path]) -> None:
    """`column_names` names the fields of local csv/tsv/txt files without a header row, and nothing else."""
    if not source.column_names:
        return
    if not files:
        raise RecipeError(
            f"dataset {source.label}: `column_names` is for local files without a header row "
            f"({', '.join(HEADERLESS_SUFFIXES)}), not for a saved dataset or a Hub dataset"
        )
    if files[0].suffix not in HEADERLESS_SUFFIXES:
        raise RecipeError(
            f"dataset {source.label}: `column_names` is for files without a header row "
            f"({', '.join(HEADERLESS_SUFFIXES)}); {files[0].name} has its own column names"
        )


def read_headerless(
    file: Path, names: list[str], lines: Iterable[str], limit: int | None = None
) -> list[dict]:
    """The (first `limit`) rows of a file with no header row whose fields are `names`, in order.

    Gap filled: `datasets`' csv builder takes the first line as the header, so a headerless file (the
    SMS Spam Collection: `label<TAB>text`) loses its first row to the column names. A .tsv or .txt
    line is split at tabs with no quoting (its texts may hold quote marks, which a csv reader would
    take as the start of a field spanning lines); the last field keeps any further tab. A .csv is read
    with the csv module's quoting. A line with fewer fields than `names` (or a csv record with more) is
    refused naming it, never dropped; blank lines hold no row and are skipped, as pandas skips them.
    An empty field is None; a column is typed as pandas types a csv column (`read_csv`).
    """
    import csv

    if file.suffix == ".csv":
        reader = csv.reader(lines)
        records: Iterable[tuple[int, list[str]]] = ((reader.line_num, record) for record in reader)
    else:
        records = (
            (number, line.rstrip("\r\n").split("\t", len(names) - 1))
            for number, line in enumerate(lines, start=1)
            if line.strip()
        )
    rows = []
    for number, record in records:
        if limit is not None and len(rows) >= limit:
            break
        if not record or record == [""]:
            continue
        if len(record) != len(names):
            raise RecipeError(
                f"{file}:{number}: {len(record)} field(s), but `column_names` names {len(names)} "
                f"({', '.join(names)})"
            )
        rows.append({c: (v if v != "" else None) for c, v in zip(names, record, strict=True)})
    for column in names:
        convert = _pandas_type([row[column] for row in rows if row[column] is not None])
        for row in rows:
            if row[column] is not None:
                row[column] = convert(row[column])
    return rows


def _pandas_type(values: list[str]) -> Callable[[str], Any]:
    """How pandas' read_csv types a column of these values: bool, int, float, else the text itself."""
    if not values:
        return str
    if all(v in ("True", "False", "TRUE", "FALSE", "true", "false") for v in values):
        return lambda v: v.lower() == "true"
    return next((kind for kind in (int, float) if all(_parses_as(kind, v) for v in values)), str)


def _parses_as(kind: type, value: str) -> bool:
    try:
        kind(value)
    except ValueError:
        return False
    return True


def _read_hub(source: DatasetSource, split: str) -> Dataset:
    import datasets

    try:
        return datasets.load_dataset(
            source.id, name=source.config, split=split, data_files=source.data_files, data_dir=source.data_dir
        )
    except ValueError as err:
        if "split" in str(err).lower():
            raise RecipeError(f"dataset {source.label} has no split {split!r} ({_first_line(err)})") from None
        raise RecipeError(f"dataset {source.label}: {_first_line(err)}") from None
    except FileNotFoundError as err:
        raise RecipeError(f"dataset {source.label}: not found ({_first_line(err)})") from None


def _slice(rows: Dataset, split: str, label: str) -> Dataset:
    """Apply `[a:b]` / `[:10%]` of `split` to already-read rows (datasets does it only inside load_dataset)."""
    if "[" not in split:
        return rows
    start, end = slice_bounds(split, len(rows), label)
    return rows.select(range(start, end))


def slice_bounds(split: str, total: int, label: str) -> tuple[int, int]:
    """Rows [start, end) of a split of `total` rows that `split` selects; a slice that selects none is refused."""
    spec = split.replace(" ", "")
    if "[" not in spec:
        return 0, total
    from datasets import ReadInstruction

    name = split_name(spec)
    try:
        instruction = ReadInstruction.from_spec(spec)
        (absolute,) = instruction.to_absolute({name: total})
    except (ValueError, AssertionError) as err:
        raise RecipeError(f"dataset {label}: bad split slice {split!r} ({_first_line(err)})") from None
    if absolute.from_ >= absolute.to:
        raise RecipeError(
            f"dataset {label}: split slice {split!r} selects no rows (split {name!r} has {total})"
        )
    return absolute.from_, absolute.to


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
