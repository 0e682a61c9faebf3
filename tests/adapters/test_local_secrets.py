"""The local secret store, on real files and real permission bits."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from reconciler.adapters.local.secrets import SecretNotFound, SecretStore
from reconciler.ports import TerminalError

CANARY = "canary-5be1d0-value"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def store(tmp_path: Path) -> SecretStore:
    return SecretStore(tmp_path / "state")


def test_set_then_get(store: SecretStore) -> None:
    store.set("db", {"USER": "app", "PASSWORD": CANARY})
    assert store.get("db") == {"USER": "app", "PASSWORD": CANARY}
    assert store.exists("db")
    assert not store.exists("other")


def test_set_merges_keys(store: SecretStore) -> None:
    store.set("db", {"USER": "app", "PASSWORD": "old"})
    store.set("db", {"PASSWORD": "new", "HOST": "db.local"})
    assert store.get("db") == {"USER": "app", "PASSWORD": "new", "HOST": "db.local"}


def test_unset_removes_keys(store: SecretStore) -> None:
    store.set("db", {"USER": "app", "PASSWORD": CANARY, "HOST": "h"})
    store.unset("db", ["PASSWORD", "HOST"])
    assert store.get("db") == {"USER": "app"}


def test_unset_of_a_missing_key_changes_nothing(store: SecretStore) -> None:
    store.set("db", {"USER": "app", "PASSWORD": CANARY})
    with pytest.raises(ValueError, match="no key\\(s\\) NOPE; its keys are: PASSWORD, USER"):
        store.unset("db", ["USER", "NOPE"])
    assert store.get("db") == {"USER": "app", "PASSWORD": CANARY}


def test_delete(store: SecretStore) -> None:
    store.set("db", {"USER": "app"})
    store.delete("db")
    assert not store.exists("db")
    assert store.list() == {}


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda s: s.get("missing"), id="get"),
        pytest.param(lambda s: s.delete("missing"), id="delete"),
        pytest.param(lambda s: s.unset("missing", ["K"]), id="unset"),
    ],
)
def test_missing_secret_says_how_to_create_it(store: SecretStore, operation: object) -> None:
    with pytest.raises(SecretNotFound) as caught:
        operation(store)  # type: ignore[operator]
    assert "secret 'missing' not found" in str(caught.value)
    assert "`reconciler secret set missing KEY=VALUE`" in str(caught.value)
    assert isinstance(caught.value, TerminalError)


def test_list_shows_key_names_only(store: SecretStore) -> None:
    store.set("zeta", {"B": CANARY, "A": CANARY})
    store.set("alpha", {"TOKEN": CANARY})
    listing = store.list()
    assert listing == {"alpha": ["TOKEN"], "zeta": ["A", "B"]}
    assert list(listing) == ["alpha", "zeta"]
    assert CANARY not in repr(listing)


def test_files_are_private_from_creation(store: SecretStore, tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even a permissive umask must not widen the modes
    try:
        store.set("db", {"PASSWORD": CANARY})
        store.set("db", {"USER": "app"})
    finally:
        os.umask(old_umask)
    directory = tmp_path / "state" / "secrets"
    assert mode(directory) == 0o700
    assert mode(directory / "db.json") == 0o600
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "db.json"]


def test_existing_directory_is_made_private(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "secrets"
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    SecretStore(tmp_path / "state")
    assert mode(directory) == 0o700


@pytest.mark.parametrize(
    "file_mode",
    [
        pytest.param(0o640, id="group-readable"),
        pytest.param(0o604, id="world-readable"),
        pytest.param(0o620, id="group-writable"),
    ],
)
def test_file_others_can_reach_is_refused(
    store: SecretStore, tmp_path: Path, file_mode: int
) -> None:
    store.set("db", {"PASSWORD": CANARY})
    path = tmp_path / "state" / "secrets" / "db.json"
    path.chmod(file_mode)
    with pytest.raises(TerminalError, match=f"chmod 600 {path}") as caught:
        store.get("db")
    assert f"{file_mode:04o}" in str(caught.value)
    assert CANARY not in str(caught.value)


def test_symlinked_secret_file_is_refused(store: SecretStore, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"K": "v"}')
    elsewhere.chmod(0o600)
    (tmp_path / "state" / "secrets" / "link.json").symlink_to(elsewhere)
    with pytest.raises(TerminalError, match="cannot read secret file"):
        store.get("link")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b'{"K": ', "not valid JSON", id="truncated"),
        pytest.param(b'["K"]', "JSON object of string keys and values", id="not-an-object"),
        pytest.param(b'{"K": 1}', "JSON object of string keys and values", id="number-value"),
    ],
)
def test_corrupt_file_is_reported(
    store: SecretStore, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "state" / "secrets" / "db.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(TerminalError, match=message):
        store.get("db")


@pytest.mark.parametrize(
    "secret_id",
    [
        pytest.param("../x", id="parent"),
        pytest.param("a/b", id="slash"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("", id="empty"),
        pytest.param("UPPER", id="upper-case"),
        pytest.param(".hidden", id="dot"),
        pytest.param("a" * 64, id="too-long"),
    ],
)
def test_bad_ids_are_refused(store: SecretStore, tmp_path: Path, secret_id: str) -> None:
    for operation in (
        lambda: store.set(secret_id, {"K": "v"}),
        lambda: store.get(secret_id),
        lambda: store.exists(secret_id),
        lambda: store.delete(secret_id),
        lambda: store.unset(secret_id, ["K"]),
    ):
        with pytest.raises(ValueError, match="secret id"):
            operation()
    assert sorted(p.name for p in (tmp_path / "state").rglob("*")) == ["secrets"]


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("a/b", id="slash"),
        pytest.param("../x", id="parent"),
        pytest.param("", id="empty"),
        pytest.param("A B", id="space"),
        pytest.param("K=V", id="equals"),
    ],
)
def test_bad_keys_are_refused(store: SecretStore, key: str) -> None:
    with pytest.raises(ValueError, match="secret key"):
        store.set("db", {key: "v"})
    assert not store.exists("db")
    store.set("db", {"OK": "v"})
    with pytest.raises(ValueError, match="secret key"):
        store.unset("db", [key])


@pytest.mark.parametrize(
    "key", [pytest.param(k, id=k) for k in ["API_TOKEN", "tls.crt", "my-key", "a1", ".."]]
)
def test_good_keys_are_accepted(store: SecretStore, key: str) -> None:
    store.set("db", {key: CANARY})
    assert store.get("db") == {key: CANARY}


def test_set_needs_values(store: SecretStore) -> None:
    with pytest.raises(ValueError, match="at least one KEY=VALUE"):
        store.set("db", {})


def test_repr_and_errors_never_show_values(store: SecretStore) -> None:
    store.set("db", {"PASSWORD": CANARY})
    assert CANARY not in repr(store)
    with pytest.raises(ValueError, match="NOPE") as caught:
        store.unset("db", ["NOPE"])
    assert CANARY not in str(caught.value)


def test_concurrent_merges_keep_every_key(store: SecretStore) -> None:
    threads = [
        threading.Thread(target=store.set, args=("db", {f"K{i}": str(i)})) for i in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get("db") == {f"K{i}": str(i) for i in range(20)}
