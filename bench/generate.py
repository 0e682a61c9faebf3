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


SCHEDULE_TIMEZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Tokyo",
    "Australia/Sydney",
)


def scheduled_manifest_text(index: int) -> str:
    """A one-step workflow firing every minute (every tenth one every two minutes).

    The time zones spread over offsets with half and quarter hours: ``*/2`` in
    Asia/Kathmandu (UTC+05:45) fires on the odd UTC minutes, elsewhere on even ones.
    """
    cron = "*/2 * * * *" if index % 10 == 9 else "* * * * *"
    return (
        "version: v2alpha\n"
        f"name: every-minute-{index:05d}\n"
        "type: workflow\n"
        "spec:\n"
        "  schedule:\n"
        f'    crons: ["{cron}"]\n'
        f"    timezone: {SCHEDULE_TIMEZONES[index % len(SCHEDULE_TIMEZONES)]}\n"
        "    concurrencyPolicy: Allow\n"
        "  dag:\n"
        "    - name: main\n"
        "      spec:\n"
        "        stack: container\n"
        '        stackSpec: {image: alpine:3.20, command: ["true"]}\n'
    )


def scheduled_manifests(count: int) -> dict[str, bytes]:
    """``count`` every-minute workflows as repo-relative path -> bytes."""
    return {
        f"scheduled/every-minute-{i:05d}.yaml": scheduled_manifest_text(i).encode()
        for i in range(count)
    }
