"""Chat messages in the canonical shape, for tests that write conversations by hand."""

from __future__ import annotations


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str, *calls: tuple[str, str]) -> dict:
    """An assistant turn; each call is (tool name, JSON arguments)."""
    message = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [
            {"type": "function", "function": {"name": name, "arguments": arguments}}
            for name, arguments in calls
        ]
    return message


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def tool(text: str) -> dict:
    return {"role": "tool", "content": text}
