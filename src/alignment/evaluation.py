"""Held-out scores of a model folder: exact match of generated answers, loss and perplexity, preference
accuracy on pairs (by log-probability, DPO's implicit reward, or a reward model).

Batched throughout (generation, log-probabilities): used by `alignment eval`, the demo and the tests.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_for_eval(model_dir: str | Path) -> tuple[Any, Any]:
    """A saved language model and its tokenizer; an adapter folder is merged into its base first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.model import adapter_base, merge_adapter

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if adapter_base(str(model_dir)) and is_prefix_tuning(model_dir):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(
            model_dir
        )  # keys/values at every layer: not mergeable
    elif adapter_base(str(model_dir)):
        model = merge_adapter(str(model_dir), tokenizer, {})
    else:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, use_safetensors=True
        )  # our own saves: no pickle
    model.to(eval_device()).eval()
    return model, tokenizer


def is_prefix_tuning(model_dir: str | Path) -> bool:
    """The folder holds a prefix-tuning adapter: used through PEFT, never merged (`soft_prompt`)."""
    path = Path(model_dir) / "adapter_config.json"
    return path.is_file() and json.loads(path.read_text()).get("peft_type") == "PREFIX_TUNING"


def end_of_turn_ids(model: Any, tokenizer: Any) -> list[int]:
    """The token ids that end a reply: the generation config's `eos_token_id` plus the tokenizer's EOS.

    Our stages save the chat template's end-of-turn token as the tokenizer's EOS; a base model's
    generation config may name only its document end, and a reply would then run on past its turn. Chat
    and serve stop on both.
    """
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def eval_device() -> str:
    """Where held-out scoring runs: the GPU when there is one (every function here moves its inputs to the
    model's device), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_prompt_learning(model: Any) -> bool:
    """`model` is a PEFT prompt- or prefix-tuning model (virtual tokens, or learned keys/values, in front)."""
    return bool(getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False))


def decode_step_by_step(
    model: Any, tokenizer: Any, prompt: list[dict], max_new_tokens: int, sample: bool
) -> str:
    """One reply from a prompt-learning PEFT model, each token from a whole forward pass of what came before.

    PEFT 0.21's `generate` for prompt and prefix tuning under transformers 5.23 does not reproduce its own
    forward pass: with the KV cache (and, for prefix tuning, without it) greedy replies differ from the
    argmax of `model(ids)` after a few tokens, and PEFT drops `position_ids`, so a left-padded batch is
    shifted. The forward pass is what training optimised; here it is used as is, one prompt at a time,
    with no cache: slower (fine for evaluation on small sets), and what the model learnt.
    """
    import torch

    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
    stops, start = set(end_of_turn_ids(model, tokenizer)), ids.shape[1]
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
        token = torch.multinomial(logits.softmax(-1), 1) if sample else logits.argmax().view(1)
        ids = torch.cat([ids, token.view(1, 1)], dim=1)
        if token.item() in stops:
            break
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True).strip()


def generate_answers(model: Any, tokenizer: Any, prompts: list[list[dict]], max_new_tokens: int = 16,
                     batch_size: int = 100, sample: bool = False, seed: int = 0) -> list[str]:  # fmt: skip
    """Continue each chat prompt with the model (greedy unless `sample`) and return the decoded replies."""
    import torch

    if sample:  # greedy needs no seed, and leaves a training run's random state alone (the callback)
        torch.manual_seed(seed)
    if is_prompt_learning(model):  # one prompt at a time, unpadded
        return [decode_step_by_step(model, tokenizer, p, max_new_tokens, sample) for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation appends on the right
    replies = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                for p in prompts[start : start + batch_size]
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(model.device)
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=sample,
                    temperature=1.0 if sample else None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            replies += [r.strip() for r in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return replies


def exact_match(model: Any, tokenizer: Any, rows: list[dict], sample: bool = False) -> dict[str, float]:
    """Share of prompts whose reply equals `answer` exactly, overall and per skill (`share_by_skill`)."""
    replies = generate_answers(model, tokenizer, [r["prompt"] for r in rows], sample=sample)
    return share_by_skill(rows, [reply == row["answer"] for row, reply in zip(rows, replies, strict=True)])


def completion_logprobs(model: Any, tokenizer: Any, prompt: list[dict], completion: list[dict]) -> float:
    """Sum of log-probabilities of the completion's tokens given the prompt, under the chat template."""
    return completion_logprobs_batch(model, tokenizer, [prompt], [completion])[0]


def completion_logprobs_batch(
    model: Any, tokenizer: Any, prompts: list[list[dict]], completions: list[list[dict]], batch_size: int = 64
) -> list[float]:
    """`completion_logprobs` of each (prompt, completion), `batch_size` sequences per forward pass.

    One pass per batch instead of one per sequence: 200 pairs scored ~40x faster on 2 CPU cores.
    """
    sequences, starts = completion_tokens(tokenizer, prompts, completions)
    return [-nll for nll, _ in sequence_nll(model, tokenizer, sequences, starts, batch_size)]


def completion_tokens(
    tokenizer: Any, prompts: list[list[dict]], completions: list[list[dict]]
) -> tuple[list[list[int]], list[int]]:
    """Each prompt + completion tokenised with the chat template, and where its completion starts."""
    sequences, starts = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        head = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        full = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)
        sequences.append(list(full["input_ids"]))
        starts.append(len(head["input_ids"]))
    return sequences, starts


def sequence_nll(
    model: Any, tokenizer: Any, sequences: list[list[int]], starts: list[int], batch_size: int = 64
) -> list[tuple[float, int]]:
    """For each token sequence: the negative log-likelihood of its tokens from `starts[i]` on, summed, and
    how many tokens that is (the first token, having no context, is never scored).

    Right-padded with an attention mask, so each sequence's logits are those of its own unpadded pass.
    """
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    scores: list[tuple[float, int]] = []
    for first in range(0, len(sequences), batch_size):
        batch = sequences[first : first + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in batch], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        token_logps = torch.log_softmax(logits, dim=-1).gather(2, ids[:, 1:, None])[..., 0]
        for row, (start, seq) in enumerate(zip(starts[first : first + batch_size], batch, strict=True)):
            begin = max(start, 1) - 1
            scores.append((-token_logps[row, begin : len(seq) - 1].sum().item(), len(seq) - 1 - begin))
    return scores


def text_loss(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 64) -> dict[str, float]:
    """Mean next-token loss and perplexity over plain texts, each tokenised as TRL trains on text (its EOS
    appended), every token but the first scored."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    sequences = [list(tokenizer(text)["input_ids"]) + eos for text in texts]
    return _loss_summary(sequence_nll(model, tokenizer, sequences, [1] * len(sequences), batch_size))


def conversation_loss(
    model: Any, tokenizer: Any, conversations: list[list[dict]], batch_size: int = 64
) -> dict:
    """Mean loss and perplexity over the assistant turns of conversations, each given the turns before it:
    what assistant-only SFT trains on (the turn's end-of-turn token included)."""
    prompts, completions = [], []
    for messages in conversations:
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                prompts.append(messages[:i])
                completions.append([message])
    sequences, starts = completion_tokens(tokenizer, prompts, completions)
    return _loss_summary(sequence_nll(model, tokenizer, sequences, starts, batch_size))


def _loss_summary(scores: list[tuple[float, int]]) -> dict[str, float]:
    import math

    nll, tokens = sum(s for s, _ in scores), sum(n for _, n in scores)
    loss = nll / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens}


def preference_accuracy(model: Any, tokenizer: Any, pairs: list[dict], reference: Any | None = None) -> float:
    """Share of pairs the model ranks correctly, strictly (ties count as wrong).

    Without `reference`: log p(chosen) > log p(rejected). With it: DPO's implicit reward,
    log p/p_ref(chosen) > log p/p_ref(rejected).
    """
    return sum(preference_wins(model, tokenizer, pairs, reference)) / len(pairs)


def preference_wins(
    model: Any, tokenizer: Any, pairs: list[dict], reference: Any | None = None, batch_size: int = 64
) -> list[bool]:
    """For each pair, whether the model ranks it correctly (see `preference_accuracy`)."""
    policy = preference_margins(model, tokenizer, pairs, batch_size)
    baseline = preference_margins(reference, tokenizer, pairs, batch_size) if reference is not None else None
    return wins_of(policy, baseline)


def preference_margins(scorer: Any, tokenizer: Any, pairs: list[dict], batch_size: int = 64) -> list[float]:
    """log p(chosen) - log p(rejected) of each pair under `scorer`."""
    prompts = [pair["prompt"] for pair in pairs]
    chosen = completion_logprobs_batch(scorer, tokenizer, prompts, [p["chosen"] for p in pairs], batch_size)
    rejected = completion_logprobs_batch(
        scorer, tokenizer, prompts, [p["rejected"] for p in pairs], batch_size
    )
    return [c - r for c, r in zip(chosen, rejected, strict=True)]


def wins_of(margins: list[float], baseline: list[float] | None = None) -> list[bool]:
    """Whether each margin (less the reference's, for DPO's implicit reward) is above 0: ties are wrong."""
    return [m - (baseline[i] if baseline is not None else 0.0) > 0 for i, m in enumerate(margins)]


def pair_skill(pair: dict) -> str | None:
    """The tiny task's skill of a pair: its `skill` field, else the prompt's first word if that names a skill."""
    from alignment.tiny.task import SKILLS

    if "skill" in pair:
        return pair["skill"]
    prompt = pair.get("prompt") or ""
    text = prompt if isinstance(prompt, str) else str(prompt[-1].get("content") or "") if prompt else ""
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    return first if first in SKILLS else None


def prompt_of(pair: dict) -> Any:
    """A pair's explicit prompt, or an empty one of the answers' kind (messages or text) when it has none."""
    return pair.get("prompt") or ([] if isinstance(pair["chosen"], list) else "")


def reward_scores(model: Any, tokenizer: Any, conversations: list[Any], batch_size: int = 100) -> list[float]:
    """The reward model's score of each text or conversation, tokenised as TRL's RewardTrainer does.

    A conversation goes through the tokenizer's chat template; a plain text gets the EOS token
    appended (TRL adds it to non-conversational rows). Padding goes right: the head reads the last
    non-pad token.
    """
    import torch

    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id
    scores: list[float] = []
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        ids = [
            tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]
            if isinstance(c, list)
            else tokenizer(c if c.endswith(tokenizer.eos_token) else c + tokenizer.eos_token)["input_ids"]
            for c in batch
        ]
        padded = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(model.device)
        with torch.no_grad():
            logits = model(**padded).logits[:, 0].float()
        scores += logits.tolist()
    return scores


def reward_accuracy(model_dir: str | Path, pairs: list[dict]) -> dict[str, float]:
    """Held-out pairwise accuracy of a saved reward model: score(prompt + chosen) > score(prompt + rejected).

    Strict (a tie is wrong), with the folder's own tokenizer and chat template; overall ("all") and
    per skill of the tiny task where a pair has one (`pair_skill`).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, use_safetensors=True)
    model.to(eval_device()).eval()
    # An explicit prompt is prepended to both answers, as TRL does when it trains the model
    chosen = [prompt_of(pair) + pair["chosen"] for pair in pairs]
    rejected = [prompt_of(pair) + pair["rejected"] for pair in pairs]
    wins = [c > r for c, r in zip(reward_scores(model, tokenizer, chosen), reward_scores(model, tokenizer, rejected),
                                  strict=True)]  # fmt: skip
    return share_by_skill(pairs, wins)


def share_by_skill(rows: list[dict], hits: list[bool]) -> dict[str, float]:
    """The share of hits overall ("all") and per skill of the tiny task where rows have one (`pair_skill`)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for row, hit in zip(rows, hits, strict=True):
        groups["all"].append(hit)
        skill = pair_skill(row)
        if skill is not None:
            groups[skill].append(hit)
    return {name: sum(v) / len(v) for name, v in groups.items()}
