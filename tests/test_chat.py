"""`alignment chat`: the loop with a scripted reader, a refused folder, and a real session in a pseudo-terminal."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignment.chat import PROMPT, chat_loop
from alignment.evaluation import generate_answers, load_for_eval

from .conftest import REPO

STATS = re.compile(r"\[(\d+) tokens, ([\d.]+) s, ([\d.]+) tokens/s\]")
# what readline writes around a line (bracketed paste on and off)
ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-_])")


def scripted(lines: list[str], end: type[BaseException]):
    """A stand-in for `input`: the lines in order, then `end` raised, as Ctrl-D (EOFError) or Ctrl-C does."""
    feed = iter(lines)

    def read(prompt: str) -> str:
        assert prompt == PROMPT
        line = next(feed, None)
        if line is None:
            raise end
        return line

    return read


@pytest.mark.parametrize("end", [EOFError, KeyboardInterrupt])
def test_loop_keeps_turns_and_reset_drops_them_but_the_system_prompt(tiny_data: Path, end, monkeypatch):
    import alignment.chat

    model, tokenizer = load_for_eval(
        tiny_data / "data" / "tiny" / "model"
    )  # untrained: only the turns matter
    rendered, replies = [], []
    render, reply_to = tokenizer.apply_chat_template, alignment.chat.stream_reply

    def spy_render(messages: list[dict], **kwargs):
        rendered.append([(m["role"], m["content"]) for m in messages])
        return render(messages, **kwargs)

    def spy_reply(*args, **kwargs) -> str:
        replies.append(reply_to(*args, **kwargs))
        return replies[-1]

    monkeypatch.setattr(tokenizer, "apply_chat_template", spy_render)
    monkeypatch.setattr(alignment.chat, "stream_reply", spy_reply)
    out = io.StringIO()
    lines = ["hello", "", "  ", "/help", "/nonsense", "world", "/reset", "again"]
    history = chat_loop(
        model, tokenizer, "Be brief.", 5, 0.0, read=scripted(lines, end), write=out, name="tiny"
    )

    system = ("system", "Be brief.")
    assert len(replies) == 3  # the blank lines, /help and /nonsense never reach the model
    assert rendered == [
        [system, ("user", "hello")],
        [system, ("user", "hello"), ("assistant", replies[0]), ("user", "world")],  # multi-turn
        [system, ("user", "again")],  # after /reset: the system prompt and the new turn only
    ]
    assert history == [{"role": r, "content": c} for r, c in [*rendered[2], ("assistant", replies[2])]]
    text = out.getvalue()
    assert text.startswith("chat with tiny: /reset")
    assert text.count("commands: /reset") == 2  # for /help and the unknown /nonsense
    assert "conversation cleared (system prompt kept)" in text
    counts = [int(n) for n, _, _ in STATS.findall(text)]
    assert len(counts) == 3 and all(1 <= n <= 5 for n in counts)
    assert all(reply in text for reply in replies)  # streamed to `write`


def test_missing_folder_is_refused_in_one_line_before_loading(tmp_path: Path, monkeypatch, capsys):
    import alignment.evaluation
    from alignment.cli import main

    monkeypatch.setattr(alignment.evaluation, "load_for_eval", lambda *a: pytest.fail("loaded a model"))
    for folder, reason in ((tmp_path / "nonexistent", "is not a folder"), (tmp_path, "holds no model")):
        with pytest.raises(SystemExit) as exit:
            main(["chat", str(folder)])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and err.count("\n") == 1
        assert err.startswith("error: alignment chat: ") and f"{folder} {reason}" in err
    with pytest.raises(SystemExit) as exit:
        main(["chat", str(tmp_path), "--temperature", "-1"])
    assert exit.value.code == 2 and "--temperature: must be a number of at least 0" in capsys.readouterr().err


class Terminal:
    """The master side of a pseudo-terminal: what the program wrote, ANSI escapes and `\\r` removed."""

    def __init__(self, fd: int):
        self.fd, self.pending = fd, ""

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def expect(self, pattern: str, timeout: float = 30.0) -> str:
        """Everything written up to the end of the first match of `pattern`; the rest stays for next time."""
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.pending)):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                pytest.fail(f"no {pattern!r} within {timeout} s; the terminal shows:\n{self.pending}")
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # EIO: the program closed the terminal
                chunk = b""
            if not chunk:
                pytest.fail(f"the program left before {pattern!r}; the terminal shows:\n{self.pending}")
            self.pending += ESCAPES.sub("", chunk.decode(errors="replace")).replace("\r", "")
        seen, self.pending = self.pending[: match.end()], self.pending[match.end() :]
        return seen


@pytest.mark.slow
def test_chat_in_a_terminal_streams_the_greedy_reply_turn_after_turn(sft_model: Path):
    model, tokenizer = load_for_eval(sft_model)
    first = [{"role": "user", "content": "reverse abcd"}]
    (reply,) = generate_answers(model, tokenizer, [first], max_new_tokens=12)
    # a second prompt whose answer depends on the first turn, so the check below shows the history is sent
    for prompt in ("sort dcba", "count abc", "upper xyz", "reverse wxyz", "sort zyx"):
        alone, after = generate_answers(model, tokenizer, [[{"role": "user", "content": prompt}],
                                        [*first, {"role": "assistant", "content": reply},
                                         {"role": "user", "content": prompt}]], max_new_tokens=12)  # fmt: skip
        if alone != after and alone and after:
            break
    else:
        pytest.fail("no second prompt whose reply depends on the first turn")
    assert reply

    master, slave = os.openpty()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TERM": "xterm"}
    command = [sys.executable, "-m", "alignment.cli", "chat", str(sft_model), "--max_new_tokens", "12"]
    chat = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env)
    os.close(slave)
    terminal = Terminal(master)
    try:
        started = time.monotonic()
        banner = terminal.expect(re.escape(PROMPT), timeout=60)
        assert f"chat with {sft_model}: /reset" in banner
        turns = [("reverse abcd", reply), (prompt, after), ("/reset", None), (prompt, alone)]
        rates = []
        for line, expected in turns:
            terminal.send(line)
            seen = terminal.expect(re.escape(PROMPT))
            echo, shown = seen.split("\n", 1)
            assert echo == line
            if expected is None:
                assert shown.removesuffix(PROMPT).strip() == "conversation cleared"
                continue
            stats = STATS.search(shown)
            assert stats, shown
            # streamed, and the reply `alignment eval` scores
            assert shown[: stats.start()].strip() == expected
            assert shown[stats.end() :].strip() == PROMPT.strip()
            rates.append(stats.groups())
        terminal.send("/exit")
        assert chat.wait(timeout=30) == 0
        print(f"chat: up in {time.monotonic() - started:.1f} s; [tokens, s, tokens/s] per reply: {rates}")
    finally:
        if chat.poll() is None:
            chat.kill()
        os.close(master)
