"""Generators of synthetic manifests repositories, shared by the benchmarks and their tests."""

from __future__ import annotations

import random

TIMEZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Sydney")


def manifest_text(index: int, *, steps: int = 3, seed: int = 0) -> str:
    """A realistic valid manifest: a small DAG with resources, a volume and a schedule."""
    rng = random.Random(seed * 1_000_003 + index)
    name = f"wf-{index:05d}"
    lines = [
        "version: v2alpha",
        f"name: {name}",
        "type: workflow",
        "tags:",
        f"  - team-{index % 17}",
        "  - generated",
        f'description: "Generated workflow number {index}"',
        "spec:",
        "  schedule:",
        "    crons:",
        f'      - "{rng.randrange(60)} {rng.randrange(24)} * * *"',
        f"    timezone: {TIMEZONES[index % len(TIMEZONES)]}",
        "    concurrencyPolicy: Forbid",
        "  dag:",
    ]
    for step in range(steps):
        lines += [
            f"    - name: step-{step}",
            f"      title: Step {step} of {name}",
        ]
        if step:
            lines += ["      depends:", f"        - step-{step - 1}"]
        lines += [
            "      spec:",
            "        compute: runnable-default",
            "        resources:",
            "          requests:",
            f"            cpu: {100 + 10 * step}m",
            "            memory: 128Mi",
            "          limits:",
            "            cpu: 500m",
            "            memory: 512Mi",
            "        use:",
            "          volumes:",
            f"            - id: vol-{index % 7}",
            "              directory: /workspace",
            "        stack: container",
            "        stackSpec:",
            "          image: docker.io/library/alpine:3.20",
            "          command:",
            "            - sh",
            "          arguments:",
            "            - -c",
            "            - |",
            f"              echo step {step} of {name}",
            "              date -u",
        ]
    return "\n".join(lines) + "\n"


def manifests(count: int, *, seed: int = 0) -> dict[str, bytes]:
    """``count`` manifests as repo-relative path -> bytes, spread over 100 directories."""
    return {
        f"workflows/group-{i % 100:03d}/wf-{i:05d}.yaml": manifest_text(i, seed=seed).encode()
        for i in range(count)
    }
