"""The data report: every row a user gave, and where it went.

Written as `data_report.json` beside every run (and by `alignment data`), printed as a table, and
summarised in the model card. Other tools read these keys, so they are stable:

- `sources`: one entry per source and split read, with `id`, `split`, `format`, `rows_read`,
  `invalid` (reason -> count), `duplicates`, `decontaminated`, `rows_kept` (after weight/samples),
  and after length accounting `dropped_too_long`, `truncated`, `rows_trained`;
- `splits`: for `train` (and `test`), `rows`, `dropped_too_long`, `truncated`, `rows_trained` and
  `tokens` (p50, p90, p99, max of the untruncated sequence lengths; for stage prompt, of the prompts),
  and `replay_rows`: of the rows trained, those of plain text an sft mixture replays (format `text`),
  trained with a language-modelling loss on every token.

Neither TRL nor datasets keeps such an account: TRL's SFT and DPO trainers drop over-long rows in a
`filter` with no count, and its truncation cuts answers (and their end-of-turn) without a word.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPORT_FILE = "data_report.json"


@dataclass
class SourceReport:
    """One source and split: rows read, and each reason a row did not reach training."""

    id: str
    split: str
    format: str
    rows_read: int
    invalid: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    decontaminated: int = 0
    rows_kept: int = 0
    repeated: int = 0  # rows added by a weight above 1 or `samples` above the rows available
    subsampled: int = 0  # valid rows left out by a weight below 1 or `samples`
    dropped_too_long: int = 0
    truncated: int = 0
    rows_trained: int | None = None  # None until the lengths are measured (needs the tokenizer)
    unused_columns: list[str] = field(default_factory=list)  # the file's columns its format does not read
    role: str = "train"  # train | test: which split of the mixture these rows went to


@dataclass
class SplitReport:
    """One split of the mixture after length accounting."""

    rows: int
    dropped_too_long: int = 0
    truncated: int = 0
    rows_trained: int = 0
    tokens: dict[str, int] = field(default_factory=dict)  # p50, p90, p99, max
    replay_rows: int = 0  # of rows_trained: plain-text replay rows of an sft mixture (data/replay.py)


@dataclass
class DataReport:
    stage: str
    max_length: int | None = None
    truncation: str = "truncate"
    sources: list[SourceReport] = field(default_factory=list)
    splits: dict[str, SplitReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / REPORT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def table(self) -> str:
        """Plain-text tables for the log and the terminal."""
        head = (
            "source",
            "split",
            "format",
            "read",
            "invalid",
            "dup",
            "decon",
            "kept",
            "too long",
            "trunc",
            "trained",
        )
        rows = [head]
        for s in self.sources:
            rows.append(
                (
                    s.id,
                    s.split,
                    self._format(s),
                    str(s.rows_read),
                    str(sum(s.invalid.values())),
                    str(s.duplicates),
                    str(s.decontaminated),
                    str(s.rows_kept) + (f" (+{s.repeated} repeats)" if s.repeated else ""),
                    str(s.dropped_too_long),
                    str(s.truncated),
                    "-" if s.rows_trained is None else str(s.rows_trained),
                )
            )
        lines = _align(rows)
        for s in self.sources:
            for reason, count in sorted(s.invalid.items()):
                lines.append(f"  {s.id} [{s.split}]: {count} invalid: {reason}")
            if s.unused_columns:
                lines.append(
                    f"  {s.id} [{s.split}]: columns not read by `{s.format}`: {', '.join(s.unused_columns)}"
                )
        for name, split in self.splits.items():
            tokens = ", ".join(f"{k} {v}" for k, v in split.tokens.items())
            if self.stage == "prompt":
                lines.append(
                    f"{name}: {self._prompt_counts(split)}; prompt tokens {tokens or 'not measured'}"
                )
                continue
            lines.append(
                f"{name}: {split.rows} rows, {split.dropped_too_long} dropped (prompt alone reaches "
                f"max_length {self.max_length}), {split.truncated} truncated "
                f"({'dropped' if self.truncation == 'drop' else 'answer cut, end-of-turn lost'}), "
                f"{split.rows_trained} trained{_replay(split)}; tokens {tokens or 'not measured'}"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def card_lines(self) -> list[str]:
        """Markdown for the model card's Data section."""
        lines = [
            "| source | split | format | read | invalid | duplicates | decontaminated | kept | trained |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in self.sources:
            invalid = ", ".join(f"{c} {r}" for r, c in sorted(s.invalid.items())) or "0"
            kept = f"{s.rows_kept}" + (f" ({s.repeated} repeats)" if s.repeated else "")
            trained = "-" if s.rows_trained is None else str(s.rows_trained)
            lines.append(
                f"| `{s.id}` | {s.split} | {self._format(s)} | {s.rows_read} | {invalid} | {s.duplicates} | "
                f"{s.decontaminated} | {kept} | {trained} |"
            )
        lines.append("")
        for s in self.sources:
            if s.unused_columns:
                lines.append(f"- `{s.id}` [{s.split}]: columns not read: {', '.join(s.unused_columns)}")
        for name, split in self.splits.items():
            tokens = ", ".join(f"{k} {v}" for k, v in split.tokens.items())
            if self.stage == "prompt":
                lines.append(f"- {name}: {self._prompt_counts(split)}; prompt tokens {tokens}")
                continue
            lines.append(
                f"- {name}: {split.rows_trained} of {split.rows} rows trained{_replay(split)}; {split.dropped_too_long} "
                f"dropped because the prompt alone reaches max_length {self.max_length}; {split.truncated} "
                f"{'dropped as truncated' if self.truncation == 'drop' else 'truncated (answer cut)'}; "
                f"tokens {tokens}"
            )
        lines += [f"- {n}" for n in self.notes]
        return lines

    def _format(self, source: SourceReport) -> str:
        """The source's format; plain text in an sft mixture is replay (data/replay.py)."""
        from alignment.data.formats import REPLAY_STAGES

        replay = self.stage in REPLAY_STAGES and source.format == "text"
        return f"{source.format} (replay)" if replay else source.format

    def _prompt_counts(self, split: SplitReport) -> str:
        """Stage prompt (GRPO, RLOO): prompts are never truncated; only a `max_length`, if any, drops some."""
        if self.max_length is None:
            return (
                f"{split.rows_trained} of {split.rows} prompts trained (no max_length: prompts are not cut)"
            )
        return (
            f"{split.rows_trained} of {split.rows} prompts trained, {split.dropped_too_long} dropped "
            f"(longer than max_length {self.max_length})"
        )


def _replay(split: SplitReport) -> str:
    """How many of a split's trained rows are conversations and how many replay text, when it replays any."""
    if not split.replay_rows:
        return ""
    return (
        f" ({split.rows_trained - split.replay_rows} conversations, {split.replay_rows} replay text rows "
        "trained with a language-modelling loss)"
    )


def _align(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
