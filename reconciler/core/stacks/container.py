"""The ``container`` stack: run a command in an image (custom scripts, CLIs, batch jobs)."""

from __future__ import annotations

import posixpath
import re
from typing import Annotated

from pydantic import AfterValidator, Field

from reconciler.core.manifests import EnvName, WireModel
from reconciler.core.stacks.registry import Stack, register

# Docker reference grammar, simplified: [registry[:port]/]path[:tag][@digest]
_IMAGE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)


def _image(value: str) -> str:
    if not _IMAGE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an image reference such as docker.io/library/alpine:3.20"
        )
    return value


def _working_dir(value: str) -> str:
    if not value.startswith("/") or posixpath.normpath(value) != value:
        raise ValueError(f"workingDir {value!r} must be an absolute, normalized path")
    return value


class ContainerSpec(WireModel):
    """``stackSpec`` of the container stack; mirrors a Kubernetes container."""

    image: Annotated[str, AfterValidator(_image)]
    command: tuple[str, ...] = ()
    arguments: tuple[str, ...] = ()
    env: dict[EnvName, str] = Field(default_factory=dict)
    working_dir: Annotated[str, AfterValidator(_working_dir)] | None = None


CONTAINER = register(
    Stack(
        name="container",
        spec_model=ContainerSpec,
        summary="run command + arguments from an image",
    )
)
