"""The tiny task's prompt and scoring for lm-eval, matching `alignment.evaluation.exact_match`: the prompt is
the row's one user message (lm-eval puts it through the chat template), the reply is stripped and must equal
`answer` exactly, and each row also counts toward its skill's share."""

from __future__ import annotations


def doc_to_text(doc: dict) -> str:
    """The text of the row's single user turn; lm-eval builds one user message from it."""
    prompt = doc["prompt"]
    if len(prompt) != 1 or prompt[0]["role"] != "user":
        raise ValueError(f"tiny_exact_match needs a prompt of one user message, got {prompt!r}")
    return prompt[0]["content"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """1.0 for an exact reply, under `exact_match` and under `exact_match_<skill>` (rows of other skills leave
    that key out, so each per-skill mean is over that skill's rows only)."""
    hit = float(results[0].strip() == doc["answer"])
    return {"exact_match": hit, f"exact_match_{doc['skill']}": hit}
