"""The one exception family for recipe and data problems, and the "did you mean" hint its messages carry."""

import difflib


class RecipeError(ValueError):
    """A problem with a recipe or its data, reported as one line that names the key, file or row at fault.

    Raised before any model is loaded; scripts turn it into `error: <message>` and exit status 2.
    """


def closest(key: str, valid: set[str] | list[str]) -> str:
    """`; did you mean `x`?` for the valid name nearest to `key`, or "" when none is near."""
    match = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return f"; did you mean `{match[0]}`?" if match else ""
