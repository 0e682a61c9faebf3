"""Who may change what: signed commits, the signers' roles, and path ownership.

The signers and their roles are the daemon's (its config), never the
repository's: a repository must not be able to grant itself rights. The
repository's ``.reconciler.yaml`` may only narrow who changes which paths
(``owners``), and only a ``tenant-admin`` may change that file. Ownership is
judged by the config of the revision last applied, so a commit cannot
widen its own rights.

Pure: the git side (``git verify-commit``, the paths a commit changed)
arrives as values.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from reconciler.core.manifests import WireModel

Role = Literal["tenant-admin", "data-developer"]
CREATING_ROLES: frozenset[str] = frozenset({"tenant-admin", "data-developer"})
CONFIG_PATH = ".reconciler.yaml"


@dataclass(frozen=True)
class Signer:
    """A person allowed to sign commits, as the daemon's config lists them."""

    name: str
    principal: str  # the email git's allowed-signers file maps the key to
    key: str  # an SSH public key line: "ssh-ed25519 AAAA..."
    roles: frozenset[str]


@dataclass(frozen=True)
class CommitCheck:
    """What git says of one commit, and what it changed (repo-relative paths)."""

    revision: str
    signed: bool  # a good signature by a key in the allowed signers
    principal: str | None
    detail: str  # git's words, for the record
    paths: tuple[str, ...]


class OwnershipRule(WireModel):
    """Who may change files matching ``paths`` (fnmatch globs, ``*`` crosses ``/``)."""

    paths: tuple[str, ...] = Field(min_length=1)
    roles: tuple[Role, ...] = ()
    signers: tuple[str, ...] = ()  # signer names from the daemon's config

    def covers(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.paths)

    def allows(self, signer: Signer) -> bool:
        return signer.name in self.signers or bool(signer.roles & set(self.roles))


def allowed_signers_text(signers: Iterable[Signer]) -> str:
    """The ``gpg.ssh.allowedSignersFile`` lines for git: principal, namespace, key."""
    return "".join(f'{s.principal} namespaces="git" {s.key}\n' for s in signers)


def refusals(
    check: CommitCheck,
    *,
    signers: Mapping[str, Signer],
    owners: Sequence[OwnershipRule],
) -> list[str]:
    """Why this commit may not be applied (empty: it may).

    ``signers`` maps principals to signers. Every changed path must be allowed:
    ``.reconciler.yaml`` to a tenant-admin only; with ``owners`` rules, any
    other path to a signer the last rule covering it allows (as in CODEOWNERS:
    put general rules first, specific ones after); paths no rule covers stay
    open to every creating role.
    """
    short = check.revision[:12]
    if not check.signed or check.principal is None:
        return [f"commit {short} is not signed by an allowed signer ({check.detail})"]
    signer = signers.get(check.principal)
    if signer is None:
        return [f"commit {short} is signed by {check.principal}, who is not an allowed signer"]
    if not signer.roles & CREATING_ROLES:
        roles = ", ".join(sorted(signer.roles)) or "none"
        return [
            f"commit {short} by {signer.name}: creating or changing workflows needs the role "
            f"tenant-admin or data-developer (has: {roles})"
        ]
    problems = []
    for path in check.paths:
        if path == CONFIG_PATH:
            if "tenant-admin" not in signer.roles:
                problems.append(
                    f"commit {short} by {signer.name} changes {CONFIG_PATH}: only a tenant-admin "
                    "may change the repository's config"
                )
            continue
        covering = [rule for rule in owners if rule.covers(path)]
        if covering and not covering[-1].allows(signer):  # as CODEOWNERS: the last match decides
            problems.append(
                f"commit {short} by {signer.name} changes {path}, which the owners rules in "
                f"{CONFIG_PATH} do not let {signer.name} change"
            )
    return problems
