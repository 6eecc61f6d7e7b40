"""Every training stage in one table: its TRL config and trainer, the rows it reads, what it loads.

A stage script is a table of contents (parse, prepare data, build the trainer, train, finish); what
differs between stages lives here, as data, so that adding a stage means a row in `STAGES`, a
recipe, a script of a few dozen lines and a test. Imports nothing heavy: the recipe parser and the
dry run read this table without loading TRL.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignment.errors import RecipeError, closest


@dataclass(frozen=True)
class Stage:
    """What a training stage is made of.

    `config` and `trainer` are names under `trl` (dotted for `trl.experimental`), or a whole import
    path under `alignment.` for ours where TRL has none. `data` is the row shape it trains on (a stage
    of the data layer: `alignment data --stage`). `head` is "causal" for a policy, "reward" for a
    sequence-classification model with one output, "classify" for one with an output per class of the
    data's labels. `reference`: the trainer takes a frozen reference model; `rewards`: it takes reward
    functions (online RL).
    """

    name: str
    config: str
    trainer: str
    data: str
    summary: str
    head: str = "causal"
    reference: bool = False
    rewards: bool = False


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("cpt", "SFTConfig", "SFTTrainer", "cpt", "continued pretraining on plain text, packed"),
        Stage("sft", "SFTConfig", "SFTTrainer", "sft", "supervised fine-tuning on conversations"),
        Stage("dpo", "DPOConfig", "DPOTrainer", "dpo", "direct preference optimisation (and its loss variants)",
              reference=True),
        Stage("kto", "KTOConfig", "KTOTrainer", "kto", "preference tuning from answers labelled good or bad",
              reference=True),
        Stage("orpo", "experimental.orpo.ORPOConfig", "experimental.orpo.ORPOTrainer", "dpo",
              "odds-ratio preference optimisation: SFT and preference in one stage, no reference"),
        Stage("cpo", "experimental.cpo.CPOConfig", "experimental.cpo.CPOTrainer", "dpo",
              "contrastive preference optimisation; SimPO with `loss_type: simpo`"),
        Stage("rm", "RewardConfig", "RewardTrainer", "rm", "a reward model (one-output head) on preference pairs",
              head="reward"),
        Stage("grpo", "GRPOConfig", "GRPOTrainer", "prompt", "online RL: group-relative advantages, no critic",
              rewards=True),
        Stage("rloo", "RLOOConfig", "RLOOTrainer", "prompt", "online RL: leave-one-out baseline, no critic",
              rewards=True),
        # TRL has no classification trainer: transformers' Trainer, with our config (alignment/classification.py)
        Stage("classify", "alignment.classification.ClassifyConfig",
              "alignment.classification.ClassificationTrainer", "classify",
              "text classification: a score head with an output per label, on text/label rows", head="classify"),
    )
}  # fmt: skip

# Row shapes the data layer knows but no stage script trains on (yet): `alignment data --stage` reads them.
DATA_ONLY_STAGES: dict[str, str] = {"prompt": "GRPOConfig"}


def stage(name: str) -> Stage:
    """The stage called `name`, or a one-line error listing the stages."""
    if name not in STAGES:
        raise RecipeError(f"unknown stage {name!r}{closest(name, list(STAGES))}; stages: {', '.join(STAGES)}")
    return STAGES[name]


def data_stage(name: str) -> str:
    """The row shape a training (or data-only) stage reads."""
    return STAGES[name].data if name in STAGES else name


def trl_attribute(dotted: str) -> type:
    """`trl.<dotted>`: e.g. "SFTTrainer" or "experimental.orpo.ORPOTrainer" (TRL keeps some trainers there);
    a path under `alignment.` is ours, imported as it is (e.g. the classify stage's trainer)."""
    import importlib

    path = dotted if dotted.startswith("alignment.") else f"trl.{dotted}"
    module, _, attribute = path.rpartition(".")
    return getattr(importlib.import_module(module), attribute)
