"""Logging set-up shared by the stage scripts: one format, the recipe's `log_level`, quiet non-main ranks."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


def setup_logging(training: Any) -> None:
    """Route our, transformers' and datasets' logs through one handler at the process's log level.

    `get_process_log_level` gives replicas (non-main ranks) `log_level_replica`, so only rank 0 talks.
    """
    import datasets
    import transformers

    level = training.get_process_log_level()
    from alignment.secrets import RedactingFilter

    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(RedactingFilter())  # a token never reaches the log, whoever logs it
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[handler],
        force=True,
    )
    logging.getLogger("alignment").setLevel(
        min(level, logging.INFO) if training.process_index == 0 else level
    )
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    if os.environ.get("WANDB_MODE") == "offline" and "wandb" in (training.report_to or []):
        logging.getLogger(__name__).info(
            "WANDB_MODE=offline: the wandb run is kept under ./wandb; `wandb sync <run folder>` uploads it later"
        )


_QUIETED = False


def quiet_library_noise() -> None:
    """Silence what the libraries print on every command and that the user can do nothing about; once per process.

    Each silenced line says what it meant in the comment beside it; where the user should still know,
    one line of ours replaces it.
    """
    global _QUIETED
    if _QUIETED:
        return
    _QUIETED = True
    import contextlib
    import io
    import warnings

    from alignment.hardware import has_accelerator

    if not has_accelerator():
        # DeepSpeed auto-detection warns "Setting accelerator to CPU ... unable to detect it" on every import;
        # on a machine with no accelerator, CPU is the answer, so say it up front.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # bitsandbytes warns at import that it could not fetch a faster CPU 4-bit kernel from the Hub
    # (`kernels-community`); it then uses its own kernel, which is correct, only slower.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # transformers' own code still calls its deprecated `is_gradient_checkpointing`; not the user's doing.
    warnings.filterwarnings(
        "ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    # transformers prints "[INFO] Running in WANDB offline mode" to stdout when its integrations import.
    # `setup_logging` says it once, with what it means, when the run reports to wandb.
    with contextlib.redirect_stdout(io.StringIO()):
        import transformers.integrations.integration_utils  # noqa: F401
