"""The one exception family for recipe and data problems."""


class RecipeError(ValueError):
    """A problem with a recipe or its data, reported as one line that names the key, file or row at fault.

    Raised before any model is loaded; scripts turn it into `error: <message>` and exit status 2.
    """
