"""Data: where a recipe's rows come from and how they are mixed (formats, validation and the report come later)."""
