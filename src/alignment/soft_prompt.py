"""A prompt-tuning adapter merged into a plain model: its virtual tokens become real tokens in front of every chat.

PEFT cannot merge prompt learning (`merge_and_unload` is for weight adapters), so a prompt-tuned
adapter could not be served by `transformers serve` or vLLM, nor start the next stage. Prompt tuning
only puts `num_virtual_tokens` learned embeddings in front of the input embeddings, at positions
0..N-1; the same happens when N new tokens, whose embedding rows are those learned vectors, are the
first tokens of the text. Here they are added to the tokenizer (`<|soft_prompt_0|>`, ...) and put
at the very start of the chat template, so the merged folder computes what the adapter computes on
any conversation. The generation config suppresses the new tokens: with tied input and output
embeddings they get a logit, and must never be generated (their share of the softmax is the only
difference from the adapter). Raw text tokenised without the chat template does not get them.

Prefix tuning learns keys and values at every layer, which no token can carry: it is not merged.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

SOFT_TOKEN = "<|soft_prompt_{}|>"


def merge_soft_prompt(peft_model: Any, tokenizer: Any) -> Any:
    """The base model of a prompt-tuning `peft_model`, with its virtual tokens as real tokens (tokenizer changed in place)."""
    embeddings = peft_model.get_prompt_embedding_to_save(adapter_name="default")  # [virtual tokens, hidden]
    model = peft_model.get_base_model()
    tokens = [SOFT_TOKEN.format(i) for i in range(embeddings.shape[0])]
    tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)
    weight = model.get_input_embeddings().weight
    ids = tokenizer.convert_tokens_to_ids(tokens)
    import torch

    with torch.no_grad():
        weight[ids] = embeddings.to(weight.dtype).to(weight.device)
    prefix = "{{- '" + "".join(tokens) + "' -}}\n"
    if not tokenizer.chat_template.startswith(prefix):  # a second merge (DPO's reference) adds nothing
        tokenizer.chat_template = prefix + tokenizer.chat_template
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.suppress_tokens = sorted(set(generation.suppress_tokens or []) | set(ids))
    logger.info(
        f"prompt tuning merged: {len(tokens)} virtual tokens are now the chat template's first tokens"
    )
    return model
