"""`Dataset.map` whose cache entry changes when this package's code does.

Gap filled: `datasets` stores a map's result under a fingerprint of the input rows, the function and
its arguments. It hashes the function it is given, not the functions that one calls: `convert_batch`
reaches each reader through a table, so a fixed reader (a csv label, a role alias) would leave every
user's cached conversion stale after an upgrade, and the run would train on the old rows without a
word. Every map of the data layer goes through `fresh_map`, which adds a hash of the package's own
source files to the fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent.parent


@functools.cache
def code_hash() -> str:
    """sha256 of every Python file of the `alignment` package (read once per process, ~15 ms)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fresh_map(rows: Any, function: Callable, **kwargs: Any) -> Any:
    """`rows.map(function, **kwargs)`, cached under the input, the function, its arguments and our code."""
    from datasets.fingerprint import Hasher

    if "new_fingerprint" not in kwargs:
        settings = {k: v for k, v in kwargs.items() if k not in ("num_proc", "desc")}
        kwargs["new_fingerprint"] = Hasher.hash(
            [rows._fingerprint, function.__module__, function.__qualname__, settings, code_hash()]
        )
    return rows.map(function, **kwargs)
