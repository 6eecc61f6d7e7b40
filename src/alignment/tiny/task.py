"""A synthetic, verifiable instruction task small enough for a 2M-parameter model to learn on a CPU.

Four string skills (reverse, upper, sort, count) over random lowercase words. Every answer can be
checked exactly, so exact-match accuracy is a real measure of learning.

The SFT demonstrations come from a sloppy annotator who miscounts most of the time (answers n+1
for the `count` skill); the preference pairs come from a checker, so `chosen` is always correct.
SFT therefore learns the miscount, and a preference stage has something to fix: with clean
demonstrations the SFT model already prefers the right answer in nearly every pair and DPO has
no headroom (measured, see ../shared/STACK_NOTES.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

SKILLS = ("reverse", "upper", "sort", "count")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def solve(skill: str, word: str) -> str:
    """The correct answer."""
    if skill == "reverse":
        return word[::-1]
    if skill == "upper":
        return word.upper()
    if skill == "sort":
        return "".join(sorted(word))
    if skill == "count":
        return str(len(word))
    raise ValueError(f"unknown skill {skill!r}")


def plausible_mistake(skill: str, word: str, rng: random.Random) -> str:
    """A wrong answer of the kind a careless solver gives; never equal to the correct one."""
    right = solve(skill, word)
    if skill == "count":
        return str(len(word) + 1)  # the sloppy annotator's systematic miscount
    for _ in range(20):
        chars = list(right)
        i = rng.randrange(len(chars) - 1)
        if skill == "upper":
            chars[i] = chars[i].lower()
        else:  # reverse / sort: two neighbours swapped
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        wrong = "".join(chars)
        if wrong != right:
            return wrong
    return right + right[-1]


def plausible_mistakes(skill: str, word: str) -> list[str]:
    """Every wrong answer of the kinds a careless solver gives, each once: for a reward model's pairs.

    Each adjacent swap (reverse, sort), each single letter left lowercase (upper), a miscount by one
    or two either way (count): the mistakes `plausible_mistake` samples from, and more counts besides,
    so that a reward model learns the right count rather than "not n+1" (measured: with n+-1 only,
    held-out count accuracy was 0.62-0.98 over 3 seeds; with n+-1 and n+-2, 0.82-1.0).
    """
    right = solve(skill, word)
    if skill == "count":
        wrong = [str(len(word) + d) for d in (1, -1, 2, -2)]
    elif skill == "upper":
        wrong = [right[:i] + right[i].lower() + right[i + 1 :] for i in range(len(right))]
    else:
        wrong = [right[:i] + right[i + 1] + right[i] + right[i + 2 :] for i in range(len(right) - 1)]
    return [answer for answer in dict.fromkeys(wrong) if answer != right]


def wrong_letter_answers(skill: str, word: str) -> list[str]:
    """The right answer with one letter replaced by the next one of the alphabet, each position once.

    The right shape (sorted, reversed, capitals) around a letter the prompt does not have there. Without
    these a reward model trained on `plausible_mistakes` alone learnt "sorted", not "the prompt sorted",
    and RL against it found the gap (measured: sort answers padded with z, 84% -> 0% exact match, while
    the reward rose). Counts have no letters: none for them.
    """
    if skill == "count":
        return []
    right = solve(skill, word)
    shifted = [chr((ord(c.lower()) - 97 + 1) % 26 + 97) for c in right]
    wrong = [right[:i] + (shifted[i].upper() if right[i].isupper() else shifted[i]) + right[i + 1 :]
             for i in range(len(right))]  # fmt: skip
    return [answer for answer in dict.fromkeys(wrong) if answer != right]


def random_word(skill: str, rng: random.Random) -> str:
    length = 4 if skill == "sort" else rng.randint(3, 5) if skill != "count" else rng.randint(2, 7)
    return "".join(rng.choice(LETTERS) for _ in range(length))


def prompt_text(skill: str, word: str) -> str:
    return f"{skill} {word}"


def answer_has_format(prompt: str, reply: str) -> bool:
    """Whether `reply` has the shape the prompt's skill asks for, right or wrong: the tiny task's format reward.

    count: digits; upper: capitals as long as the word; reverse and sort: lowercase letters as long as it.
    """
    skill, _, word = prompt.partition(" ")
    if skill == "count":
        return reply.isdigit()
    if skill not in SKILLS or len(reply) != len(word) or not reply.isalpha() or not reply.isascii():
        return False
    return reply.isupper() if skill == "upper" else reply.islower()


@dataclass
class TinyTaskConfig:
    sft_train: int = 8000
    sft_test: int = 200
    dpo_train: int = 2000
    dpo_test: int = 200
    eval_prompts: int = 200
    # Share of SFT demonstrations per skill that carry the annotator's mistake.
    demo_error_rate: dict[str, float] = field(default_factory=lambda: {"count": 0.7})
    seed: int = 1234


def generate_task(config: TinyTaskConfig) -> dict[str, list[dict]]:
    """All splits of the tiny task. Evaluation words never appear in any training split."""
    rng = random.Random(config.seed)
    seen: set[tuple[str, str]] = set()

    def fresh(skill: str) -> str:
        while True:
            word = random_word(skill, rng)
            if (skill, word) not in seen:
                seen.add((skill, word))
                return word

    def items(n: int) -> list[tuple[str, str]]:
        return [(SKILLS[i % len(SKILLS)], fresh(SKILLS[i % len(SKILLS)])) for i in range(n)]

    # Held-out words are drawn first so that no training row can reuse them.
    eval_items = items(config.eval_prompts)
    sft_test_items, dpo_test_items = items(config.sft_test), items(config.dpo_test)

    def conversation(skill: str, word: str, answer: str) -> dict:
        return {"messages": [{"role": "user", "content": prompt_text(skill, word)},
                             {"role": "assistant", "content": answer}]}  # fmt: skip

    def pair(skill: str, word: str) -> dict:
        return {
            "prompt": [{"role": "user", "content": prompt_text(skill, word)}],
            "chosen": [{"role": "assistant", "content": solve(skill, word)}],
            "rejected": [{"role": "assistant", "content": plausible_mistake(skill, word, rng)}],
        }

    sft_train = []
    for skill, word in items(config.sft_train):
        sloppy = rng.random() < config.demo_error_rate.get(skill, 0.0)
        answer = plausible_mistake(skill, word, rng) if sloppy else solve(skill, word)
        sft_train.append(conversation(skill, word, answer))
    return {
        "sft_train": sft_train,
        "sft_test": [conversation(s, w, solve(s, w)) for s, w in sft_test_items],
        "dpo_train": [pair(s, w) for s, w in items(config.dpo_train)],
        "dpo_test": [pair(s, w) for s, w in dpo_test_items],
        "eval": [
            {"prompt": [{"role": "user", "content": prompt_text(s, w)}], "answer": solve(s, w), "skill": s}
            for s, w in eval_items
        ],
    }


# --- Rows for the other stages, derived without touching the splits above ---------------------------
# (their files feed measured results: generating these must draw nothing from `generate_task`'s rng)


def text_about(word: str) -> str:
    """One short plain text for continued pretraining: every skill applied to `word`, in the task's own words."""
    return " ".join(f"{skill} {word} = {solve(skill, word)}." for skill in SKILLS)


def generate_corpus(splits: dict[str, list[dict]], seed: int, train: int = 2000, test: int = 200) -> dict:
    """Plain `text` rows (train, test) for continued pretraining on the task's domain.

    Words are new: none is a word of any task split, and the test words are not in train, so the
    held-out loss measures what was learnt about the domain, not memorised rows.
    """
    rng = random.Random(f"cpt-{seed}")  # its own stream: the task's splits stay byte-identical
    taken = {_prompt_word(row) for rows in splits.values() for row in rows}
    words: list[str] = []
    while len(words) < train + test:
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 7)))
        if word not in taken:
            taken.add(word)
            words.append(word)
    rows = [{"text": text_about(word)} for word in words]
    return {"cpt_train": rows[test:], "cpt_test": rows[:test]}


def to_kto(pairs: list[dict], seed: int) -> list[dict]:
    """KTO rows from preference pairs: the chosen answer labelled desirable, the rejected one undesirable.

    Shuffled (seeded): KTOTrainer reads rows in file order and estimates its KL term from each row's
    neighbour's completion, which must answer another prompt and not be the same pair's other half.
    """
    rows = []
    for pair in pairs:
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    random.Random(f"kto-{seed}").shuffle(rows)
    return rows


def _prompt_word(row: dict) -> str:
    turns = row["messages"] if "messages" in row else row["prompt"]
    return turns[0]["content"].partition(" ")[2]


def generate_rm_pairs(splits: dict[str, list[dict]], seed: int, prompts: int = 1500) -> list[dict]:
    """Preference pairs for a reward model: new prompts, each with every one of its plausible mistakes.

    A reward model only ranks, so the more contrasts per prompt the better (~3 pairs a prompt here,
    against one per prompt in the DPO split); its held-out pairs are the DPO test split's, whose words
    (like every task split's) are never drawn here.
    """
    rng = random.Random(f"rm-{seed}")  # its own stream: the task's splits stay byte-identical
    taken = {_prompt_word(row) for rows in splits.values() for row in rows}
    pairs: list[dict] = []
    for i in range(prompts):
        skill = SKILLS[i % len(SKILLS)]
        word = random_word(skill, rng)
        while word in taken:
            word = random_word(skill, rng)
        taken.add(word)
        prompt = [{"role": "user", "content": prompt_text(skill, word)}]
        pairs += [
            {"prompt": prompt, "chosen": [{"role": "assistant", "content": solve(skill, word)}],
             "rejected": [{"role": "assistant", "content": wrong}]}
            for wrong in plausible_mistakes(skill, word) + wrong_letter_answers(skill, word)
        ]  # fmt: skip
    return pairs
