"""Settings: flags over RECONCILER_* environment variables over the config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.app.settings import SettingsError, load_settings


def test_precedence_flags_env_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("repo: from-file\nbranch: file-branch\ninterval: 5\nstate-dir: /from/file\n")
    settings = load_settings(
        {"branch": "flag-branch", "owner": None},
        environ={"RECONCILER_BRANCH": "env-branch", "RECONCILER_INTERVAL": "7"},
        config_file=config,
    )
    assert settings.repo == "from-file"
    assert settings.branch == "flag-branch"
    assert settings.interval == 7.0
    assert settings.state_dir == Path("/from/file")
    assert settings.owner == "default"


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("owner: team-a\n")
    settings = load_settings({}, environ={"RECONCILER_CONFIG": str(config)})
    assert settings.owner == "team-a"


@pytest.mark.parametrize(
    ("flags", "environ", "message"),
    [
        pytest.param({"interval": -1}, {}, "setting 'interval' (--interval)", id="flag"),
        pytest.param(
            {},
            {"RECONCILER_OWNER": "Team A"},
            "setting 'owner' (environment variable RECONCILER_OWNER)",
            id="env",
        ),
    ],
)
def test_errors_name_the_setting_and_its_origin(
    flags: dict[str, object], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(flags, environ=environ)


def test_unknown_setting_in_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("intervall: 5\n")
    with pytest.raises(SettingsError, match=r"'intervall' \(config file .*unknown setting"):
        load_settings({}, environ={}, config_file=config)


def test_token_from_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    settings = load_settings({"git_token_file": token}, environ={})
    assert settings.token() == "s3cret"
    assert "s3cret" not in repr(load_settings({}, environ={"RECONCILER_GIT_TOKEN": "s3cret"}))
