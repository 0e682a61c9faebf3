"""Stacks: the runtimes a step can use. Importing this package registers the built-ins."""

from reconciler.core.stacks import container
from reconciler.core.stacks.registry import (
    Stack,
    find_stack,
    known_stacks,
    register,
    unknown_stack_message,
)

__all__ = ["Stack", "container", "find_stack", "known_stacks", "register", "unknown_stack_message"]
