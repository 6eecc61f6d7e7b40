"""The cases of tests/bad_data/ that are not committed as files: bytes that are not UTF-8, binary formats,
and files of 300 rows whose fault lies beyond the dry run's first rows. cases.yaml names the maker
(`make:`); tests/test_bad_data.py calls it to write the file into the case's folder.

    python tests/bad_data/generate.py OUT_DIR     # write them all, to look at
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path


def _arithmetic(n: int) -> list[dict]:
    """n plain question/answer conversations, all different (`What is 3 plus 17?` / `20.`)."""
    rows = []
    for i in range(n):
        a, b = 3 + i, 17 + 2 * i
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a + b}."},
                ]
            }
        )
    return rows


def _lines(rows: list[dict]) -> list[bytes]:
    return [json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows]


def invalid_utf8(folder: Path) -> None:
    """Line 2 saved by a Latin-1 editor: `café` as the single byte 0xE9."""
    lines = _lines(_arithmetic(4))
    lines[1] = b'{"messages": [{"role": "user", "content": "How do I order a caf\xe9 au lait in Paris?"}, '
    lines[1] += b'{"role": "assistant", "content": "Say: un caf\xe9 au lait, s\'il vous pla\xeet."}]}\n'
    (folder / "invalid-utf8.jsonl").write_bytes(b"".join(lines))


def truncated_utf8(folder: Path) -> None:
    """A download cut short on line 3, inside the two bytes of an `é`."""
    lines = _lines(_arithmetic(2))
    third = json.dumps(
        {"messages": [{"role": "user", "content": "Un café, s'il vous plaît."}]}, ensure_ascii=False
    )
    cut = third.encode()[: third.encode().index("é".encode()) + 1]  # the first byte of é, not the second
    (folder / "truncated-utf8.jsonl").write_bytes(b"".join(lines) + cut)


def spreadsheet(folder: Path) -> None:
    """An Excel workbook (a zip archive), which `datasets` has no builder for."""
    (folder / "conversations.xlsx").write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00" + b"\x00" * 64)


def late_malformed_json(folder: Path) -> None:
    """300 rows; line 200 lost its closing brace."""
    lines = _lines(_arithmetic(300))
    lines[199] = lines[199].rstrip(b"\n")[:-1] + b"\n"
    (folder / "late-malformed-json.jsonl").write_bytes(b"".join(lines))


def late_ends_on_user(folder: Path) -> None:
    """300 rows; row 250 ends on a user turn."""
    rows = _arithmetic(300)
    rows[249]["messages"].append({"role": "user", "content": "And times two?"})
    (folder / "late-ends-on-user.jsonl").write_bytes(b"".join(_lines(rows)))


def late_invalid_utf8(folder: Path) -> None:
    """300 rows; line 180 has a Latin-1 byte."""
    lines = _lines(_arithmetic(300))
    lines[179] = lines[179].replace(b"What is", b"Qu'est-ce que c'est \xe9gal \xe0")
    (folder / "late-invalid-utf8.jsonl").write_bytes(b"".join(lines))


def dpo_late_chosen_equals_rejected(folder: Path) -> None:
    """300 preference pairs; pair 260's rejected answer is its chosen one."""
    rows = []
    for i in range(300):
        a, b = 3 + i, 17 + 2 * i
        right, wrong = f"{a + b}.", f"{a + b + 1}."
        rows.append(
            {"prompt": f"What is {a} plus {b}?", "chosen": right, "rejected": right if i == 259 else wrong}
        )
    (folder / "late-chosen-equals-rejected.jsonl").write_bytes(b"".join(_lines(rows)))


def parquet_question_answer(folder: Path) -> None:
    """A Parquet export with `question`/`answer` columns: no SFT format reads those names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "question": ["What is the capital of Peru?", "How many minutes are in a day?"],
            "answer": ["Lima.", "1440."],
        }
    )
    pq.write_table(table, folder / "question-answer.parquet")


def saved_without_test(folder: Path) -> None:
    """A `save_to_disk` DatasetDict with a train split only."""
    import datasets

    train = datasets.Dataset.from_list(_arithmetic(8))
    datasets.DatasetDict({"train": train}).save_to_disk(str(folder / "saved-train-only"))


MAKERS: dict[str, Callable[[Path], None]] = {
    f.__name__: f
    for f in (
        invalid_utf8,
        truncated_utf8,
        spreadsheet,
        late_malformed_json,
        late_ends_on_user,
        late_invalid_utf8,
        dpo_late_chosen_equals_rejected,
        parquet_question_answer,
        saved_without_test,
    )
}

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for make in MAKERS.values():
        make(out)
