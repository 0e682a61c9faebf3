"""Real git repositories for end-to-end tests: a bare remote and a work clone that pushes to it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import EXAMPLES_REPO


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


class Remote:
    """A bare repository (the remote) plus a clone to write commits from."""

    def __init__(self, root: Path, *, branch: str = "main") -> None:
        self.branch = branch
        self.bare = root / "remote.git"
        self.work = root / "work"
        self.bare.mkdir(parents=True)
        git(self.bare, "init", "--bare", "-q", "-b", branch)
        self.work.mkdir()
        git(self.work, "init", "-q", "-b", branch)
        git(self.work, "config", "user.name", "Test Author")
        git(self.work, "config", "user.email", "author@example.com")
        git(self.work, "config", "commit.gpgsign", "false")
        git(self.work, "remote", "add", "origin", str(self.bare))

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def write(self, relpath: str, text: str) -> None:
        target = self.work / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def remove(self, relpath: str) -> None:
        git(self.work, "rm", "-q", relpath)

    def move(self, old: str, new: str) -> None:
        (self.work / new).parent.mkdir(parents=True, exist_ok=True)
        git(self.work, "mv", old, new)

    def read(self, relpath: str) -> str:
        return (self.work / relpath).read_text()

    def commit(self, message: str = "change") -> str:
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", message)
        git(self.work, "push", "-q", "--force", "origin", f"HEAD:{self.branch}")
        return git(self.work, "rev-parse", "HEAD")

    def copy_examples(self) -> str:
        for path in EXAMPLES_REPO.rglob("*"):
            if path.is_file():
                relpath = path.relative_to(EXAMPLES_REPO)
                (self.work / relpath).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, self.work / relpath)
        return self.commit("Add the example workflows")

    def rewrite_history(self, message: str = "rewritten") -> str:
        """Replace the branch with a new orphan commit of the current files (a force-push)."""
        git(self.work, "checkout", "-q", "--orphan", "rewritten")
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "branch", "-q", "-D", self.branch)
        git(self.work, "branch", "-q", "-m", self.branch)
        git(self.work, "push", "-q", "--force", "origin", f"HEAD:{self.branch}")
        return git(self.work, "rev-parse", "HEAD")
