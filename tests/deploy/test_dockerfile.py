"""Static checks of the Dockerfile and .dockerignore (no Docker engine needed).

The Dockerfile is parsed into instructions (continuation lines joined, comments
dropped) and build arguments are expanded with their defaults.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
DOCKERFILE = PROJECT / "Dockerfile"
DOCKERIGNORE = PROJECT / ".dockerignore"
PYPROJECT = tomllib.loads((PROJECT / "pyproject.toml").read_text())

OCI_LABELS = ("title", "description", "source", "licenses", "version", "revision", "created")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    image: str  # with the build arguments' defaults expanded
    name: str | None
    instructions: list[Instruction]


def instructions() -> list[Instruction]:
    result: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def arg_defaults(items: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for item in items:
        if item.keyword == "ARG" and "=" in item.args:
            name, _, value = item.args.partition("=")
            defaults[name] = value.strip('"')
    return defaults


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], ""), text)


def stages() -> list[Stage]:
    items = instructions()
    first_from = next(i for i, item in enumerate(items) if item.keyword == "FROM")
    global_args = arg_defaults(items[:first_from])
    result: list[Stage] = []
    for item in items[first_from:]:
        if item.keyword == "FROM":
            parts = item.args.split()
            flags = [p for p in parts if p.startswith("--")]
            assert not flags, f"unexpected FROM flags {flags}"
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            result.append(Stage(expand(parts[0], global_args), name, []))
        else:
            result[-1].instructions.append(item)
    return result


def final() -> Stage:
    return stages()[-1]


def labels(stage: Stage) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in stage.instructions:
        if item.keyword == "LABEL":
            for key, value in re.findall(r'([\w.\-]+)="([^"]*)"', item.args):
                found[key] = value
    return found


def test_multi_stage_on_an_exact_slim_python_release() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    assert all_stages[0].name == "builder"
    for stage in all_stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", stage.image), stage.image
    assert len({stage.image for stage in all_stages}) == 1  # the venv moves between them
    copies = [i.args for i in final().instructions if i.keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    version = re.search(r"python:(\d+\.\d+)", final().image)
    assert version is not None
    assert tuple(map(int, version[1].split("."))) >= tuple(map(int, minimum.split(".")))


def test_the_digest_pin_is_optional_and_well_formed() -> None:
    digest = arg_defaults(instructions()).get("PYTHON_DIGEST", "")
    assert digest == "" or re.fullmatch(r"@sha256:[0-9a-f]{64}", digest)


def test_runs_as_the_non_root_user_the_deployment_expects() -> None:
    users = [i.args for i in final().instructions if i.keyword == "USER"]
    assert users, "no USER in the final stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit()  # numeric, so that runAsNonRoot can verify it
    assert int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    deployment = yaml.safe_load((PROJECT / "deploy" / "base" / "deployment.yaml").read_text())
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsUser"] == int(uid)
    assert pod_security["runAsGroup"] == int(gid or uid)


def test_installs_git_and_openssh_client_cleanly() -> None:
    runs = " ".join(i.args for i in final().instructions if i.keyword == "RUN")
    install = re.search(r"apt-get install ([^&]*)", runs)
    assert install is not None
    packages = [
        p.strip('"').split("$")[0].split("=")[0]
        for p in install[1].split()
        if not p.startswith("-")
    ]
    assert {"git", "openssh-client"} <= set(packages)
    assert "--no-install-recommends" in install[1]
    assert "rm -rf /var/lib/apt/lists/*" in runs
    defaults = arg_defaults(instructions())
    for arg in ("GIT_VERSION", "OPENSSH_CLIENT_VERSION"):
        # Debian versions: [epoch:]upstream-revision, as apt-cache policy prints them.
        assert re.fullmatch(r"(\d+:)?[0-9][\w.+~]*-[\w.+~]+", defaults[arg]), defaults[arg]


def test_oci_labels() -> None:
    found = labels(final())
    for name in OCI_LABELS:
        assert f"org.opencontainers.image.{name}" in found, name
    for name in ("source", "version", "revision", "created"):
        value = found[f"org.opencontainers.image.{name}"]
        assert re.fullmatch(r"\$\{\w+\}", value), f"{name} should come from a build argument"
    assert found["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]
    stage_args = arg_defaults(final().instructions)
    assert stage_args["VERSION"] == PYPROJECT["project"]["version"]


def test_entrypoint_and_cmd() -> None:
    items = final().instructions
    entrypoints = [i.args for i in items if i.keyword == "ENTRYPOINT"]
    cmds = [i.args for i in items if i.keyword == "CMD"]
    assert json.loads(entrypoints[-1]) == ["reconciler"]  # exec form: signals reach Python
    assert json.loads(cmds[-1]) == ["daemon"]
    assert "reconciler" in PYPROJECT["project"]["scripts"]


def test_no_remote_add_and_no_latest_tags() -> None:
    for item in instructions():
        assert item.keyword != "ADD", "use COPY (ADD fetches URLs and unpacks archives)"
        assert ":latest" not in item.args


# ---------------------------------------------------------------------------
# .dockerignore
# ---------------------------------------------------------------------------


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i : end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (or a parent directory of it) out of the context."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            result = not negate
    return result


def dockerignore() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/content",
        ".pytest_cache/v/cache",
        ".hypothesis/examples/x",
        "reconciler/__pycache__/cli.cpython-311.pyc",
        ".demo-state/reconciler.db",
        ".reconciler-state/reconciler.db",
        "bench/out/results.json",
        "tests/core/test_dags.py",
        "build/lib/x.py",
        "dist/workflow_reconciler-0.1.0.whl",
        "workflow_reconciler.egg-info/PKG-INFO",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert ignored(path, dockerignore())


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "reconciler/app/cli.py"])
def test_dockerignore_keeps_what_the_build_copies(path: str) -> None:
    assert not ignored(path, dockerignore())
    copied = [
        source
        for stage in stages()
        for item in stage.instructions
        if item.keyword == "COPY" and "--from=" not in item.args
        for source in item.args.split()[:-1]
    ]
    assert any(path == c or path.startswith(c) for c in copied), copied
