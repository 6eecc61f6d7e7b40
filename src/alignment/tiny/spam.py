"""A generated spam-or-not task for the classify stage: short SMS-like texts, labelled `spam` or `ham`.

Written as the SMS Spam Collection ships (`label<TAB>text`, no header), so the tiny recipe reads its
data the way a real one does. About a fifth of the messages are spam. Spam carries the cues real spam
does (prizes, money, links, premium numbers, urgency, capitals); ham is everyday chat. Neither is
clean, so a model cannot score 100% on one cue: some ham uses spam's words ("are you free", "we won",
"urgent", a delivery notice with a link, a login code), some spam has few cues (a fake bank or parcel
message in plain words), texts are sometimes lower-cased or abbreviated, and a small share of labels
is flipped, as annotators slip. Every text is unique (as `dedup` compares them) and no training text
shares a 13-word run with a test text, so no row is lost to deduplication or decontamination.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

HAM, SPAM = "ham", "spam"

NAMES = ["Sam", "Jo", "Alex", "Priya", "Tom", "Mia", "Leo", "Nina", "Raj", "Ella", "Ben", "Zoe", "Dan", "Ana"]
PLACES = ["the pub", "Tesco", "the station", "uni", "the gym", "mums", "the cinema", "work", "the park",
          "the library", "Costa", "the chippy", "town", "the office"]  # fmt: skip
ITEMS = ["milk", "bread", "the charger", "my jacket", "some eggs", "the tickets", "your keys", "the parcel",
         "a pizza", "the car", "the laptop", "my glasses", "coffee", "the dog food"]  # fmt: skip
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "tomorrow", "tonight"]
TIMES = ["6", "7", "7.30", "8", "half 6", "noon", "10", "9ish", "5", "after work"]
FEELINGS = ["tired", "bored", "starving", "so happy", "knackered", "fine", "stressed", "sick", "better"]

PRIZES = ["a brand new iPhone", "a 2000 pound cash prize", "a free holiday to Spain", "a 500 gift card",
          "a Nokia camera phone", "2 free flights", "a 1000 shopping voucher", "a new laptop",
          "free cinema tickets for a year", "a 350 award"]  # fmt: skip
MONEY = ["1000", "2000", "500", "250", "5000", "750", "1500", "100"]
WORDS = ["WIN", "CLAIM", "YES", "PRIZE", "GO", "STOP", "FREE", "CASH"]
OFFERS = ["ringtones", "loans", "mobile upgrades", "holiday deals", "credit", "dating", "casino bonuses"]
BRANDS = ["your bank", "Royal Mail", "HMRC", "your network", "PayPal", "DPD", "Amazon"]


@dataclass
class SpamTaskConfig:
    """Sizes and shares of the generated task (a 2-core CPU learns it in about a minute: recipes/tiny/classify)."""

    train: int = 2000
    test: int = 500
    spam_share: float = 0.22
    subtle_spam: float = 0.15  # of spam: few cues, plain words
    tricky_ham: float = 0.15  # of ham: spam's words in an ordinary message
    label_noise: float = 0.015  # labels flipped, as annotators slip
    seed: int = 7


def _phone(rng: random.Random) -> str:
    return rng.choice(["0906", "0871", "0800", "0907"]) + "".join(rng.choice("0123456789") for _ in range(7))


def _short_code(rng: random.Random) -> str:
    return str(rng.randrange(10000, 90000))


def _link(rng: random.Random) -> str:
    word = rng.choice(["win", "prize", "claim", "deal", "bonus", "secure", "verify", "gift"])
    code = "".join(rng.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(5))
    return rng.choice([f"http://{word}-{code}.com", f"www.{word}{code}.co.uk", f"bit.ly/{code}{word[:2]}"])


def spam_text(rng: random.Random) -> str:
    """A spam message with its usual cues."""
    prize, money, word = rng.choice(PRIZES), rng.choice(MONEY), rng.choice(WORDS)
    templates = [
        f"WINNER!! You have been selected to receive {prize}. Call {_phone(rng)} now to claim. T&Cs apply",
        f"URGENT! Your mobile number has won {money} pounds in our draw. To claim txt {word} to {_short_code(rng)}",
        f"FREE entry into our {money} weekly comp! Text {word} to {_short_code(rng)} now. 18+ only",
        f"Congratulations! You've won {prize}. Claim it at {_link(rng)} before {rng.choice(DAYS)}",
        f"Your account has been suspended. Verify your details now at {_link(rng)} or lose access",
        f"Get {rng.choice(['50', '70', '30', '80'])}% off {rng.choice(OFFERS)} today only! Visit {_link(rng)}",
        f"You have 1 new voicemail. Call {_phone(rng)} to listen. Calls cost {rng.randrange(10, 150)}p/min",
        f"Last chance! Claim your free {rng.choice(OFFERS)} before midnight: {_link(rng)} Reply STOP to end",
        f"Dear customer, you are owed {money} pounds in refunds. Reply {word} or call {_phone(rng)} today",
        f"SIX chances to win CASH! From 100 to {money} pounds txt {word} to {_short_code(rng)}. Cost 150p/day",
        f"Hot {rng.choice(OFFERS)} just for you! Send {word} to {_short_code(rng)} for your FREE trial",
        f"You are a WINNER! Your {prize} is waiting. Call {_phone(rng)} quoting code {_short_code(rng)}",
    ]
    return rng.choice(templates)


def subtle_spam_text(rng: random.Random) -> str:
    """Spam in plain words: no capitals, no prize, sometimes no link."""
    name = rng.choice(NAMES)
    templates = [
        f"Hi, this is {name} from {rng.choice(BRANDS)}, please call me back on {_phone(rng)} about your account",
        "Hey! I found a great way to earn from home, reply yes for more info",
        f"We tried to deliver your parcel on {rng.choice(DAYS)}. Reschedule here {_link(rng)}",
        f"{name} wants to chat with you, they have sent you a photo. Reply to see it",
        "hi there, is this still your number? I have a business offer you might like",
        f"Your {rng.choice(BRANDS).removeprefix('your ')} payment did not go through, update it at {_link(rng)}",
    ]
    return rng.choice(templates)


def ham_text(rng: random.Random) -> str:
    """An ordinary message between people who know each other."""
    name, place, item = rng.choice(NAMES), rng.choice(PLACES), rng.choice(ITEMS)
    day, time = rng.choice(DAYS), rng.choice(TIMES)
    templates = [
        f"Are you coming to {place} {day}?",
        f"I'll be there in {rng.randrange(2, 40)} mins",
        f"Can you pick up {item} on the way home?",
        f"Sorry, in a meeting. Call you after {time}",
        f"Happy birthday {name}! Have a great day x",
        f"Did you see the match last night? {rng.choice(['Unreal', 'Awful', 'What a game', 'So close'])}",
        f"Running late, save me a seat at {place}",
        f"Mum says dinner at {time} {day}",
        f"ok see you at {place} at {time}",
        f"Thanks for {day}, it was fun :)",
        f"Where did you leave {item}?",
        f"Don't forget {name}'s party {day}",
        f"I'm {rng.choice(FEELINGS)}, going to bed early {day}",
        f"{name} said she'd meet us at {place} around {time}",
        f"Just got to {place}, where are you?",
        f"Have you got {item}? I can't find it anywhere",
        f"Lol that's hilarious {name}",
        f"Can we move it to {day}? Something came up",
        f"Yeah {time} works for me, see you at {place}",
        f"Good luck with the interview {day}! You'll be great",
        f"Is {name} still coming {day} or not?",
        f"Left {item} at {place}, can you grab it?",
    ]
    return rng.choice(templates)


def tricky_ham_text(rng: random.Random) -> str:
    """An ordinary message with spam's words or shapes in it."""
    name, place, day = rng.choice(NAMES), rng.choice(PLACES), rng.choice(DAYS)
    templates = [
        f"Are you free {day}? Want to go to {place}",
        f"WE WON!! {rng.randrange(1, 6)}-{rng.randrange(0, 3)} in the final, drinks at {place}",
        f"Call me when you can, it's urgent, about {rng.choice(ITEMS)}",
        f"I got a text saying I won a prize lol, so fake. Don't click those links {name}",
        f"Your {rng.choice(ITEMS).removeprefix('the ').removeprefix('my ')} is ready to collect at {place}",
        f"Your login code is {rng.randrange(100000, 999999)}. Do not share it with anyone",
        f"Free pizza at {place} {day} if you want to come!",
        f"Reply when you get this {name}, need to know about {day}",
        f"Claim your seat at {place} early, it gets busy {day}",
        f"There's a 2 for 1 offer on at {place} {day}, fancy it?",
    ]
    return rng.choice(templates)


def _casual(text: str, rng: random.Random) -> str:
    """Sometimes how people type: lower-cased, or with text-speak."""
    roll = rng.random()
    if roll < 0.15:
        return text.lower()
    if roll < 0.25:
        for word, short in (
            (" you ", " u "),
            (" your ", " ur "),
            (" to ", " 2 "),
            (" for ", " 4 "),
            ("tomorrow", "2moro"),
        ):
            text = text.replace(word, short)
    return text


def generate_spam(config: SpamTaskConfig | None = None) -> dict[str, list[dict]]:
    """{"train": [...], "test": [...]}, each row {"label": "spam" | "ham", "text": str}; deterministic."""
    from alignment.data.curation import DEFAULT_NGRAM, ngrams, normalise

    config = config or SpamTaskConfig()
    rng = random.Random(config.seed)
    seen: set[str] = set()
    held_out: set[tuple[str, ...]] = set()  # the test texts' n-grams, which decontamination looks for

    def message(spam: bool) -> str:
        while True:
            if spam:
                text = subtle_spam_text(rng) if rng.random() < config.subtle_spam else spam_text(rng)
            else:
                text = tricky_ham_text(rng) if rng.random() < config.tricky_ham else ham_text(rng)
            text = _casual(text, rng)
            if normalise(text) not in seen and held_out.isdisjoint(ngrams(text, DEFAULT_NGRAM)):
                seen.add(normalise(text))
                return text

    def rows(n: int) -> list[dict]:
        out = []
        for _ in range(n):
            spam = rng.random() < config.spam_share
            text = message(spam)
            if rng.random() < config.label_noise:
                spam = not spam
            out.append({"label": SPAM if spam else HAM, "text": text})
        return out

    test = rows(config.test)  # drawn first, as the tiny task draws its held-out rows first
    held_out.update(gram for row in test for gram in ngrams(row["text"], DEFAULT_NGRAM))
    return {"train": rows(config.train), "test": test}


def write_tsv(path: Path, rows: list[dict]) -> None:
    """`label<TAB>text` lines with no header, as the SMS Spam Collection ships."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{row['label']}\t{row['text']}\n" for row in rows))
