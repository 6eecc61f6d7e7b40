"""Curation: exact and near-duplicate removal, and decontamination against evaluation prompts, each counted.

Neither TRL nor `datasets` deduplicates rows or checks a training set against the prompts it will be
evaluated on; a duplicate is trained on twice and a leaked eval prompt inflates the score that
follows. Everything here works on canonical rows (the per-stage shapes every reader converts to)
and plain lists, so the mixture can count what each source lost to each step.

- Exact: a hash of the row's text after `normalise` (whitespace runs collapsed, lower-cased), so
  rows that differ only in spacing or case are one row; the first occurrence wins, across sources.
- Near: MinHash-LSH (`datasketch`) over word 5-shingles; a row is dropped when its estimated
  Jaccard similarity with an earlier kept row reaches the threshold (0.8 by default). One word
  changed in the middle of a 40-word text changes 5 of its 36 shingles (Jaccard 31/41 = 0.76), so
  near-dedup is for longer texts and templated rewrites; short texts are exact-dedup's job.
- Decontamination: a training text is contaminated when it shares one word 13-gram with an eval
  prompt (n = 13 as in GPT-3 and open-instruct). Eval prompts shorter than n words have no n-gram
  and cannot be checked; `EvalNgrams.too_short` counts them so the report can say so. Words are
  split on whitespace, so punctuation stays on its word ("noon." and "noon" differ).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.errors import RecipeError, closest

STAGES = ("sft", "dpo", "rm", "kto", "cpt", "classify", "prompt")
# The message lists each stage's canonical row holds, in the order their text is joined. A `prompt` row
# is its prompt alone: online RL generates its own answers, so two rows with one prompt are one row
# (whatever their reference answers) and a prompt is contaminated when it matches an eval prompt.
MESSAGE_COLUMNS = {
    "sft": ("messages",),
    "dpo": ("prompt", "chosen", "rejected"),
    "rm": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion"),
    "prompt": ("prompt",),
}
PROMPT_COLUMN = {"sft": "messages", "dpo": "prompt", "rm": "prompt", "kto": "prompt", "prompt": "prompt"}
DEFAULT_NGRAM = 13
_WHITESPACE = re.compile(r"\s+")


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise RecipeError(
            f"curation: unknown stage `{stage}`; use one of {', '.join(STAGES)}{closest(stage, STAGES)}"
        )


def normalise(text: str) -> str:
    """Whitespace runs become one space, then strip and lower-case: what two rows must share to be one row."""
    return _WHITESPACE.sub(" ", text).strip().lower()


def render_messages(messages: list[dict] | str | None) -> list[str]:
    """One line per message, `role: content`, and one per tool call, `role calls name(arguments)`."""
    if messages is None:
        return []
    if isinstance(messages, str):  # a prompt/completion given as plain text
        return [messages]
    lines = []
    for message in messages:
        role = message.get("role", "")
        lines.append(f"{role}: {message.get('content') or ''}")
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            lines.append(f"{role} calls {function.get('name', '')}({function.get('arguments', '')})")
    return lines


def row_stage(row: dict, stage: str) -> str:
    """The shape of one canonical row of `stage`: cpt for a replay row of an sft mixture (its `text` set)."""
    return "cpt" if stage == "sft" and row.get("text") is not None else stage


def row_text(row: dict, stage: str) -> str:
    """All the text of a canonical row: its message lists (role-labelled, with tool calls) or text, label."""
    check_stage(stage)
    stage = row_stage(row, stage)
    if stage in ("cpt", "classify"):
        text = require_column(row, "text", stage)
        return text if stage == "cpt" else f"{text}\nlabel: {require_column(row, 'label', stage)}"
    lines = []
    for column in MESSAGE_COLUMNS[stage]:
        lines.append(f"[{column}]")
        lines += render_messages(require_column(row, column, stage))
    if stage == "kto":
        lines.append(f"[label] {require_column(row, 'label', stage)}")
    return "\n".join(lines)


def require_column(row: dict, column: str, stage: str) -> Any:
    if column not in row:
        raise RecipeError(
            f"curation: a {stage} row has no `{column}` column (it has {', '.join(sorted(row)) or 'none'}); "
            f"convert the source to the canonical {stage} shape first"
        )
    return row[column]


def rows_of(batch: dict[str, list]) -> list[dict]:
    """The rows of a `Dataset.map(batched=True)` batch (a dict of columns)."""
    columns = list(batch)
    return [dict(zip(columns, values, strict=True)) for values in zip(*batch.values(), strict=True)]


# ---- Exact deduplication ----------------------------------------------------


def dedup_key(text: str) -> str:
    return hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).hexdigest()


def dedup_keys(batch: dict[str, list], *, stage: str) -> dict[str, list]:
    """Batched map fn: column `_dedup_key`, a hex digest of the row's normalised text."""
    return {"_dedup_key": [dedup_key(row_text(row, stage)) for row in rows_of(batch)]}


@dataclass
class ExactDeduplicator:
    """The keys seen so far, kept across a mixture's sources so a row repeated in two sources is kept once."""

    seen: set[str] = field(default_factory=set)

    def keep_mask(self, keys: Sequence[str]) -> list[bool]:
        """True for each row whose key is new (first occurrence, in order); remembers the keys it keeps."""
        keep = []
        for key in keys:
            new = key not in self.seen
            if new:
                self.seen.add(key)
            keep.append(new)
        return keep


# ---- Near deduplication -------------------------------------------------------


def shingles(text: str, size: int) -> set[bytes]:
    """Word `size`-shingles of normalise(text); a text shorter than `size` words is one shingle, itself."""
    words = normalise(text).split()
    if len(words) <= size:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


class NearDeduplicator:
    """MinHash-LSH near-duplicate filter; like ExactDeduplicator, it remembers every row it kept.

    LSH finds candidates cheaply; a candidate counts only when the MinHash estimate of its Jaccard
    similarity with the new row reaches `threshold` (LSH alone lets some lower pairs through).
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle: int = 5, seed: int = 0) -> None:
        try:
            from datasketch import MinHashLSH
        except ImportError as e:
            raise RecipeError("dedup: minhash needs datasketch (pip install 'alignment[minhash]')") from e
        if not 0 < threshold <= 1:
            raise RecipeError(f"dedup: minhash threshold is {threshold}; it must be in (0, 1]")
        self.threshold, self.num_perm, self.shingle, self.seed = threshold, num_perm, shingle, seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.kept: dict[int, Any] = {}  # LSH key -> hash values of a kept row

    def keep_mask(self, texts: Sequence[str]) -> list[bool]:
        """True for a text with no earlier kept text at estimated Jaccard >= threshold; indexes kept ones."""
        from datasketch import MinHash

        keep = []
        sets = (sorted(shingles(text, self.shingle)) for text in texts)
        for minhash in MinHash.generator(sets, num_perm=self.num_perm, seed=self.seed):
            values = minhash.hashvalues
            duplicate = any(
                (self.kept[key] == values).mean() >= self.threshold for key in self.lsh.query(minhash)
            )
            if not duplicate:
                key = len(self.kept)
                self.lsh.insert(key, minhash, check_duplication=False)
                self.kept[key] = values
            keep.append(not duplicate)
        return keep


# ---- Decontamination ------------------------------------------------------------


WORD = re.compile(r"\w+")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The word n-grams of normalise(text), words without their punctuation (so `noon.` matches `noon`).

    Empty when the text has fewer than n words.
    """
    words = WORD.findall(normalise(text))
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class EvalNgrams:
    """The n-grams of a set of evaluation prompts; the prompts too short to have one, kept whole.

    A prompt shorter than n words has no n-gram; it is matched instead against training prompts
    that equal it (normalised), which catches a short benchmark question copied into training.
    """

    n: int
    grams: set[tuple[str, ...]]
    texts: int  # eval texts read
    too_short: int  # eval texts with fewer than n words: matched only as whole prompts
    short: set[str] = field(default_factory=set)  # those texts, normalised

    @classmethod
    def from_texts(cls, texts: Iterable[str], n: int = DEFAULT_NGRAM) -> EvalNgrams:
        if n < 1:
            raise RecipeError(f"decontamination: n-gram size is {n}; it must be a positive number of words")
        grams: set[tuple[str, ...]] = set()
        short: set[str] = set()
        count = too_short = 0
        for text in texts:
            count += 1
            found = ngrams(text, n)
            if not found:
                too_short += 1
                short.add(normalise(text))
            grams |= found
        return cls(n=n, grams=grams, texts=count, too_short=too_short, short=short)

    def contaminated_mask(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[bool]:
        """True for each training text that shares an n-gram with an eval text, or whose prompt
        (`prompts`, aligned with `texts`) equals a short eval prompt."""
        hits = [bool(self.grams) and not self.grams.isdisjoint(ngrams(text, self.n)) for text in texts]
        if prompts is not None and self.short:
            hits = [h or normalise(p) in self.short for h, p in zip(hits, prompts, strict=True)]
        return hits


def user_contents(messages: list[dict] | str | None) -> str:
    """The user turns of a message list, one per line (a plain-text prompt is itself)."""
    if messages is None:
        return ""
    if isinstance(messages, str):
        return messages
    return "\n".join(m.get("content") or "" for m in messages if m.get("role") == "user")


def eval_texts(rows: Iterable[dict], stage: str) -> list[str]:
    """The prompt side of canonical eval rows (user turns; the text for cpt/classify), one text a row."""
    check_stage(stage)
    return [_eval_text(row, row_stage(row, stage)) for row in rows]


def _eval_text(row: dict, stage: str) -> str:
    if stage in ("cpt", "classify"):
        return require_column(row, "text", stage)
    return user_contents(require_column(row, PROMPT_COLUMN[stage], stage))


# ---- Evaluation prompt files ------------------------------------------------------

PROMPT_KEYS = ("prompt", "messages", "question", "instruction", "text")


def read_eval_prompts(path: str) -> list[str]:
    """The prompts of a JSONL file (or a .json list) of evaluation rows, one text a row.

    A row's prompt is the first of: `prompt` (a string, or a message list: its user turns),
    `messages` (its user turns), `question`, `instruction` (with `input` after it when non-empty), `text`.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise RecipeError(f"{path}: cannot read evaluation prompts ({e.strerror or e})") from e
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecipeError(
                f"{path}:{number}: not valid UTF-8 (byte {e.start}); save the file as UTF-8"
            ) from e
    text = raw.decode("utf-8").lstrip("\ufeff")
    if file.suffix == ".json" and text.lstrip().startswith("["):
        entries = _json_list(text, path)
    else:
        entries = _jsonl_rows(text, path)
    if not entries:
        raise RecipeError(f"{path}: no evaluation prompts in the file; give one JSON object a line")
    return [prompt_of(row, where) for where, row in entries]


def _json_list(text: str, path: str) -> list[tuple[str, Any]]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecipeError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); the file must be a JSON list") from e
    return [(f"{path}: item {i}", row) for i, row in enumerate(rows)]


def _jsonl_rows(text: str, path: str) -> list[tuple[str, Any]]:
    entries = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            entries.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise RecipeError(
                f"{path}:{number}: not valid JSON ({e.msg}); give one JSON object a line"
            ) from e
    return entries


def prompt_of(row: Any, where: str) -> str:
    """The prompt text of one evaluation row; `where` (path:line) names it in errors."""
    if not isinstance(row, dict):
        raise RecipeError(f"{where}: expected a JSON object with a prompt, got {type(row).__name__}")
    key = next((k for k in PROMPT_KEYS if k in row), None)
    if key is None:
        raise RecipeError(
            f"{where}: no prompt; give the row one of the keys {', '.join(PROMPT_KEYS)} "
            f"(it has {', '.join(sorted(row)) or 'none'})"
        )
    value = row[key]
    if key in ("prompt", "messages") and isinstance(value, list):
        if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
            raise RecipeError(
                f"{where}: `{key}` must be a list of {{role, content}} messages with string content"
            )
        if not any(m.get("role") == "user" for m in value):
            raise RecipeError(f"{where}: `{key}` has no user message to check")
        return user_contents(value)
    if key == "messages":
        raise RecipeError(
            f"{where}: `messages` must be a list of {{role, content}} messages, got {type(value).__name__}"
        )
    if not isinstance(value, str):
        expected = "a string or a message list" if key == "prompt" else "a string"
        raise RecipeError(f"{where}: `{key}` must be {expected}, got {type(value).__name__}")
    if key == "instruction":
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            raise RecipeError(f"{where}: `input` must be a string, got {type(extra).__name__}")
        return f"{value}\n{extra}" if extra else value
    return value
