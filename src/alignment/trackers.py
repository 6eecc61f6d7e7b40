"""Experiment trackers (`report_to`): is the package each one needs installed? Checked before any model loads.

transformers finds a missing tracker package only when the Trainer is built, after the data and the
model are loaded, and its message does not say which extra of ours brings the package.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from alignment.errors import RecipeError, closest

# Trackers that an extra of this package brings (pyproject.toml); the others are installed by name.
EXTRAS = {"wandb", "trackio"}


def tracker_packages() -> dict[str, tuple[str, Callable[[], bool]]]:
    """`report_to` name -> (what to pip install, transformers' own check for it). kubeflow needs no package."""
    from transformers import integrations as hf

    def installed(module: str) -> Callable[[], bool]:
        return lambda: importlib.util.find_spec(module) is not None

    return {
        "wandb": ("wandb", hf.is_wandb_available),
        "trackio": ("trackio", hf.is_trackio_available),
        "tensorboard": ("tensorboard", hf.is_tensorboard_available),
        # transformers' comet check also fails on a missing API key, which is not a missing package.
        "comet_ml": ("comet-ml", installed("comet_ml")),
        "mlflow": ("mlflow", hf.is_mlflow_available),
        "neptune": ("neptune", hf.is_neptune_available),
        "clearml": ("clearml", hf.is_clearml_available),
        "codecarbon": ("codecarbon", hf.is_codecarbon_available),
        "dvclive": ("dvclive", hf.is_dvclive_available),
        "swanlab": ("swanlab", hf.is_swanlab_available),
        "dagshub": ("dagshub mlflow", hf.is_dagshub_available),
        "flyte": ("flytekit flytekitplugins-deck-standard", hf.is_flyte_deck_standard_available),
        "azure_ml": ("azureml-core", hf.is_azureml_available),
    }


def check_tracker_names(report_to: list[str] | str | None) -> list[str]:
    """The `report_to` names, or a RecipeError for one transformers does not know (a typo is never a
    missing package: this is an error even in a dry run)."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK

    known = set(INTEGRATION_TO_CALLBACK)
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        if name not in known and name not in ("none", "all"):
            raise RecipeError(
                f"report_to: `{name}` is not a tracker transformers knows{closest(name, known)} "
                f"(known: {', '.join(sorted(known))}, or none)"
            )
    return names


def require_trackers(report_to: list[str] | str | None) -> None:
    """Raise RecipeError naming the tracker, its package and how to install it, for the first one missing."""
    names = check_tracker_names(report_to)
    packages = tracker_packages()
    for name in names:
        if name in ("none", "all") or name not in packages:  # "all": the trackers that are installed
            continue
        package, available = packages[name]
        if not available():
            install = f"pip install 'alignment[{name}]'" if name in EXTRAS else f"pip install {package}"
            raise RecipeError(
                f"report_to: `{name}` needs `{package}`, which is not installed; "
                f"run `{install}` or remove `{name}` from report_to"
            )
