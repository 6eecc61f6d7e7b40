"""Exact match on held-out prompts during training, logged to the trainer's trackers.

    eval_generation_prompts: data/tiny/eval.jsonl   # rows with a prompt and its `answer`
    eval_generation_steps: 40                       # also at the start and at the last step

A falling loss does not say whether the model answers better; this shows the task metric rise. TRL's
`LogCompletionsCallback` logs sample completions as a table and its `WinRateCallback` needs a judge;
neither scores answers against references, which is the gap this fills. The metric is the one
`alignment eval --prompts` reports (`evaluation.exact_match`: greedy, chat template, exact string), logged
as `eval_exact_match` (and `eval_exact_match/<skill>` when the rows have a `skill`).

Every process answers its own share of the prompts and the hits are gathered, so under DeepSpeed ZeRO-3
all ranks take part in each `generate` (transformers syncs them) and N processes share the work. The
prompts are read and checked before the model loads.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from transformers import Trainer, TrainerCallback

if TYPE_CHECKING:
    from alignment.recipe import Recipe

logger = logging.getLogger(__name__)


class GenerationEval(TrainerCallback):
    """Greedy exact match on `rows` at the first step, every `every` steps (None: never between) and the last."""

    def __init__(self, rows: list[dict], every: int | None, max_new_tokens: int = 16, batch_size: int = 64):
        self.rows, self.every = rows, every
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.trainer: Any = None
        self.done_at: set[int] = set()

    def bind(self, trainer: Any) -> None:
        """The trainer whose model answers and whose trackers get the metric (as TRL's own callbacks take it)."""
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.evaluate(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        if step == state.max_steps or (self.every and step % self.every == 0):
            due = control.should_log  # logging clears it, which would drop this step's regular log line
            self.evaluate(step)
            control.should_log = due

    def evaluate(self, step: int) -> dict[str, float] | None:
        if self.trainer is None or step in self.done_at:
            return None
        self.done_at.add(step)
        from accelerate.utils import gather_object

        from alignment.evaluation import generate_answers, share_by_skill

        start = time.time()
        state = self.trainer.accelerator.state
        rank, world = state.process_index, state.num_processes
        share = _shard(len(self.rows), rank, world)  # the same length on every rank: as many generate calls
        model = self.trainer.model
        was_training = model.training
        model.eval()
        try:
            replies = generate_answers(
                model, self.trainer.processing_class, [self.rows[i]["prompt"] for i in share],
                max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
            )  # fmt: skip
        finally:
            model.train(was_training)
        mine = [(i, reply == self.rows[i]["answer"]) for i, reply in zip(share, replies, strict=True)]
        hits = dict(
            gather_object(mine) if world > 1 else mine
        )  # padded shares repeat a row: a dict keeps one
        shares = share_by_skill(self.rows, [hits[i] for i in range(len(self.rows))])
        metrics = {
            "eval_exact_match" if key == "all" else f"eval_exact_match/{key}": v for key, v in shares.items()
        }
        metrics["eval_exact_match_seconds"] = round(time.time() - start, 2)
        # transformers' Trainer.log, not TRL's override: TRL's also flushes the train metrics it is averaging
        # (token accuracy, rewards) into this entry, taking them from the next regular log line.
        Trainer.log(self.trainer, metrics)
        return metrics


def _shard(n: int, rank: int, world: int) -> list[int]:
    """Rank `rank`'s row indices, padded with its last index so that every rank has ceil(n / world)."""
    size = -(-n // world)
    indices = list(range(rank * size, min(n, (rank + 1) * size))) or [n - 1]
    return indices + [indices[-1]] * (size - len(indices))


def generation_eval_callback(recipe: Recipe, tokenizer: Any) -> GenerationEval | None:
    """The callback the recipe asks for (`eval_generation_prompts`), its prompts read and checked; else None."""
    args = recipe.args
    if not args.eval_generation_prompts:
        return None
    from alignment.eval_command import read_prompts

    rows = read_prompts(
        args.eval_generation_prompts, args.eval_generation_split, args.eval_generation_max_rows,
        "`eval_generation_prompts`",
    )  # fmt: skip
    # room for the longest answer and its end-of-turn, and never less than `alignment eval` allows
    longest = max(len(tokenizer(row["answer"], add_special_tokens=False)["input_ids"]) for row in rows)
    every = f", every {args.eval_generation_steps} steps" if args.eval_generation_steps else ""
    logger.info(
        f"generation eval: exact match on {len(rows)} prompts at the start{every} and at the last step"
    )
    return GenerationEval(rows, args.eval_generation_steps, max_new_tokens=max(16, longest + 4))
