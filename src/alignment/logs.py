"""Logging set-up shared by the stage scripts: one format, the recipe's `log_level`, quiet non-main ranks."""

from __future__ import annotations

import logging
import sys
from typing import Any


def setup_logging(training: Any) -> None:
    """Route our, transformers' and datasets' logs through one handler at the process's log level.

    `get_process_log_level` gives replicas (non-main ranks) `log_level_replica`, so only rank 0 talks.
    """
    import datasets
    import transformers

    level = training.get_process_log_level()
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
        force=True,
    )
    logging.getLogger("alignment").setLevel(
        min(level, logging.INFO) if training.process_index == 0 else level
    )
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
