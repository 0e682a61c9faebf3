"""The registry of stacks: what a step's ``stack`` may name.

A stack is a name plus a pydantic model of its ``stackSpec``. Adding one is
a module that defines the model and calls ``register`` (see ``container``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel


@dataclass(frozen=True)
class Stack:
    name: str
    spec_model: type[BaseModel]
    summary: str


_STACKS: dict[str, Stack] = {}


def register(stack: Stack) -> Stack:
    if stack.name in _STACKS:
        raise ValueError(f"stack {stack.name!r} is registered twice")
    _STACKS[stack.name] = stack
    return stack


def known_stacks() -> tuple[str, ...]:
    return tuple(sorted(_STACKS))


def find_stack(name: str) -> Stack | None:
    return _STACKS.get(name)


def unknown_stack_message(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, known_stacks(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown stack {name!r}; {hint}known stacks: {', '.join(known_stacks())}"
