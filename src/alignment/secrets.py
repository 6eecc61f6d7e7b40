"""Secrets: a token given to a run never reaches a file or a log line that we write.

transformers redacts `*_token` fields in `TrainingArguments.to_dict`, but it pickles the real value
into `training_args.bin` (saved with every checkpoint and uploaded by a push), and the recipe text
and command line that our model card quotes hold it verbatim. This module fills that gap: the recipe
parser takes `hub_token` out of the training config into `HF_TOKEN` (which huggingface_hub reads for
the push), and every text we write or log passes through `redact`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

REDACTED = "<redacted>"
# Environment variable names that hold credentials: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, WANDB_API_KEY,
# OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY, ... (TOKENIZERS_PARALLELISM is not one).
SECRET_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY|AUTH)(_|$)", re.IGNORECASE)
MIN_SECRET_LENGTH = 8  # shorter values ("true", "1") would redact ordinary words

_secrets: set[str] = set()


def register(value: object) -> None:
    """Remember `value` as a secret, to be redacted from everything written from now on."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
        _secrets.add(value)


def register_environment(environ: Mapping[str, str] | None = None) -> None:
    """Register the values of credential-like variables (the process's, or an `env:` block's)."""
    for name, value in (os.environ if environ is None else environ).items():
        if SECRET_NAME.search(str(name)):
            register(str(value))


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `<redacted>` (longest first: no partial leftovers)."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def move_hub_token(values: dict) -> str | None:
    """Take `hub_token` out of the parsed values into `HF_TOKEN`; return a note when one was moved.

    `training_args.bin` then holds no token, and the Trainer's push (which passes `hub_token=None`)
    authenticates through huggingface_hub's own `HF_TOKEN` lookup.
    """
    token = values.get("hub_token")
    if not token:
        return None
    register(token)
    os.environ["HF_TOKEN"] = token
    values["hub_token"] = None
    return "hub_token moved to the HF_TOKEN environment variable of this run, so no saved file holds it"


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from every record it passes (ours and the libraries')."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True
