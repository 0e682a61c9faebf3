"""Commit verification with real SSH-signed commits on a real git remote: only authorized,
signed changes reach the backend; a refused change leaves everything as it was and says why."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from reconciler.adapters.clocks import SystemClock
from reconciler.adapters.gitsource import GitSource
from reconciler.adapters.local.store import LocalStore
from reconciler.app.syncing import Syncer, SyncOptions, Verification
from reconciler.core.signing import Signer, allowed_signers_text
from tests.app.gitfixtures import Remote, git

DEVELOPER = "dev@example.com"
ADMIN = "admin@example.com"
VIEWER = "viewer@example.com"


def keypair(directory: Path, name: str) -> tuple[Path, str]:
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key, key.with_suffix(".pub").read_text().split(" comment")[0].strip()


class Repo:
    """A remote whose commits are signed with the key of whoever commits."""

    def __init__(self, root: Path) -> None:
        self.remote = Remote(root)
        self.keys = root / "keys"
        self.keys.mkdir()
        self.signers: dict[str, tuple[Path, str]] = {}

    def person(self, email: str) -> tuple[Path, str]:
        if email not in self.signers:
            self.signers[email] = keypair(self.keys, email.split("@")[0])
        return self.signers[email]

    def commit(self, message: str, *, by: str | None) -> str:
        work = self.remote.work
        git(work, "add", "-A")
        email = by or "someone@example.com"
        args = ["-c", f"user.email={email}", "commit", "-q", "--allow-empty", "-m", message]
        if by is not None:
            key, _ = self.person(by)
            args = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", *args, "-S"]
        git(work, *args)
        git(work, "push", "-q", "--force", "origin", f"HEAD:{self.remote.branch}")
        return git(work, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    repo = Repo(tmp_path)
    repo.person(DEVELOPER)
    repo.person(ADMIN)
    repo.person(VIEWER)
    repo.remote.copy_examples()  # the first commit: signed below
    return repo


def syncer_for(repo: Repo, tmp_path: Path, *, owners_rules: str = "") -> tuple[Syncer, LocalStore]:
    signers = (
        Signer("dev", DEVELOPER, repo.person(DEVELOPER)[1], frozenset({"data-developer"})),
        Signer("admin", ADMIN, repo.person(ADMIN)[1], frozenset({"tenant-admin"})),
        Signer("viewer", VIEWER, repo.person(VIEWER)[1], frozenset()),
    )
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(allowed_signers_text(signers))
    store = LocalStore(tmp_path / "state", clock=SystemClock())
    source = GitSource(repo.remote.url, cache_dir=tmp_path / "cache")
    syncer = Syncer(
        source,
        store,
        clock=SystemClock(),
        options=SyncOptions(owner="o", verification=Verification(signers, allowed)),
        sleep=lambda _: None,
    )
    return syncer, store


def names(store: LocalStore) -> set[str]:
    return {w.name for w in store.all_workflows()}


def cpu_of(store: LocalStore, name: str) -> str:
    workflow = next(w for w in store.all_workflows() if w.name == name)
    return json.dumps(workflow.spec)


def bump_cpu(repo: Repo, value: str) -> None:
    text = repo.remote.read("workflows/daily-report.yaml")
    repo.remote.write("workflows/daily-report.yaml", text.replace("cpu: 500m", f"cpu: {value}", 1))


def test_signed_by_an_allowed_developer_is_applied(repo: Repo, tmp_path: Path) -> None:
    repo.commit("examples", by=ADMIN)
    syncer, store = syncer_for(repo, tmp_path)
    assert syncer.sync().result == "succeeded"
    assert len(names(store)) == 4
    bump_cpu(repo, "2")
    repo.commit("more cpu", by=DEVELOPER)
    outcome = syncer.sync()
    assert outcome.result == "succeeded"
    assert '"cpu": "2"' in cpu_of(store, "daily-report")
    assert outcome.record is not None
    verified = outcome.record.source["verified"]
    assert [v["signer"] for v in verified] == ["dev"]
    kinds = [(e.kind, e.message) for e in store.events(key="sync")]
    assert any(k == "ChangeVerified" and "signed by dev" in m for k, m in kinds)


@pytest.mark.parametrize(
    "who", [None, "stranger@example.com", VIEWER], ids=["unsigned", "unknown-key", "no-role"]
)
def test_unsigned_unknown_or_roleless_commits_are_refused_and_change_nothing(
    repo: Repo, tmp_path: Path, who: str | None
) -> None:
    repo.commit("examples", by=ADMIN)
    syncer, store = syncer_for(repo, tmp_path)
    assert syncer.sync().result == "succeeded"
    before = {w.key: w.spec_hash for w in store.all_workflows()}
    bump_cpu(repo, "3")
    (repo.remote.work / "workflows" / "projected-workflow.yaml").unlink()
    revision = repo.commit("sneaky", by=who)
    outcome = syncer.sync()
    assert outcome.result == "failed"
    assert revision[:12] in outcome.message
    assert {w.key: w.spec_hash for w in store.all_workflows()} == before  # nothing changed
    last = store.last_sync()
    assert last is not None
    assert last.result == "failed"
    assert revision[:12] in last.errors[0]["message"]
    refused = [e for e in store.events(key="sync") if e.kind == "ChangeRefused"]
    assert refused
    assert revision[:12] in refused[0].message
    assert syncer.sync().result == "failed"  # and stays refused, without re-recording
    assert len([e for e in store.events(key="sync") if e.kind == "ChangeRefused"]) == len(refused)


def test_a_data_developer_may_not_change_the_repo_config(repo: Repo, tmp_path: Path) -> None:
    repo.commit("examples", by=ADMIN)
    syncer, store = syncer_for(repo, tmp_path)
    assert syncer.sync().result == "succeeded"
    config = repo.remote.read(".reconciler.yaml")
    repo.remote.write(".reconciler.yaml", config + '\nexclude: ["workflows/daily-*"]\n')
    repo.commit("exclude the report", by=DEVELOPER)
    outcome = syncer.sync()
    assert outcome.result == "failed"
    assert "only a tenant-admin may change the repository's config" in outcome.message
    assert "daily-report" in names(store)
    # the admin may
    repo.commit("the admin agrees", by=ADMIN)  # still contains the developer's commit: refused
    assert syncer.sync().result == "failed"


def test_a_path_outside_the_signers_ownership_is_refused(repo: Repo, tmp_path: Path) -> None:
    config = repo.remote.read(".reconciler.yaml")
    repo.remote.write(
        ".reconciler.yaml",
        config
        + "\nowners:\n"
        + '  - paths: ["workflows/*"]\n    roles: [data-developer]\n'
        + '  - paths: ["workflows/daily-*"]\n    roles: [tenant-admin]\n',
    )
    repo.commit("examples, with owners", by=ADMIN)
    syncer, store = syncer_for(repo, tmp_path)
    assert syncer.sync().result == "succeeded"
    bump_cpu(repo, "4")
    repo.commit("the developer edits the admin's report", by=DEVELOPER)
    outcome = syncer.sync()
    assert outcome.result == "failed"
    assert "workflows/daily-report.yaml" in outcome.message
    assert "owners rules" in outcome.message
    assert '"cpu": "4"' not in cpu_of(store, "daily-report")


def test_owned_paths_may_be_changed_by_their_owners(repo: Repo, tmp_path: Path) -> None:
    config = repo.remote.read(".reconciler.yaml")
    repo.remote.write(
        ".reconciler.yaml",
        config + '\nowners:\n  - paths: ["workflows/*"]\n    signers: [dev]\n',
    )
    repo.commit("owners", by=ADMIN)
    syncer, store = syncer_for(repo, tmp_path)
    assert syncer.sync().result == "succeeded"
    bump_cpu(repo, "5")
    repo.commit("dev's own", by=DEVELOPER)
    assert syncer.sync().result == "succeeded"
    assert '"cpu": "5"' in cpu_of(store, "daily-report")


def test_verification_needs_a_git_source(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from reconciler.app.cli import cli

    config = tmp_path / "config.yaml"
    config.write_text("verify_commits: true\n")
    result = CliRunner().invoke(
        cli,
        ["sync", "--config", str(config), "--repo", "examples-repo", "--state-dir", str(tmp_path)],
    )
    assert result.exit_code == 1
    assert "no signers are configured" in result.output


def test_the_signer_who_created_a_workflow_is_recorded_as_its_creator(
    repo: Repo, tmp_path: Path
) -> None:
    repo.commit("examples", by=ADMIN)
    syncer, store = syncer_for(repo, tmp_path)
    assert syncer.sync().result == "succeeded"
    repo.remote.write(
        "workflows/copy.yaml",
        repo.remote.read("workflows/daily-report.yaml").replace(
            "name: daily-report", "name: dev-copy"
        ),
    )
    repo.commit("a workflow of my own", by=DEVELOPER)
    assert syncer.sync().result == "succeeded"
    assert store.get_value("created-by/public/dev-copy") == "dev"
