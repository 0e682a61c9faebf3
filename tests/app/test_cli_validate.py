"""``reconciler validate`` and ``schema`` as a user runs them: exit codes and output lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.app.cli import cli
from tests.conftest import EXAMPLES_REPO, GOLDEN


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout


def test_examples_repo_is_valid() -> None:
    code, out = run("validate", str(EXAMPLES_REPO))
    assert code == 0, out
    assert out == ""


def test_examples_repo_json_report() -> None:
    code, out = run("validate", "--format", "json", str(EXAMPLES_REPO))
    report = json.loads(out)
    assert code == 0
    assert report["valid"] is True
    assert report["workflows"] == 4
    assert report["files"] == 4  # .github/ and .reconciler.yaml are not manifests


def test_console_script_and_module_entry_points() -> None:
    exe = shutil.which("reconciler", path=str(Path(sys.executable).parent))
    assert exe is not None
    for argv in ([exe], [sys.executable, "-m", "reconciler"]):
        done = subprocess.run(
            [*argv, "validate", str(EXAMPLES_REPO)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr


def test_invalid_file_exits_1_with_path_line_field(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "version: v2alpha\nname: bad\ntype: workflow\nspec:\n  dag:\n"
        "    - name: a\n      depends: [b]\n      spec: {}\n"
    )
    code, out = run("validate", str(manifest))
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 1
    path, line, column, rest = lines[0].split(":", 3)
    assert Path(path).name == "bad.yaml"
    assert (line, column) == ("7", "17")
    assert rest.startswith(" spec.dag[0].depends[0]: unknown step 'b'")


def test_valid_files_are_checked_when_others_fail(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES_REPO, tmp_path / "repo")
    broken = tmp_path / "repo" / "workflows" / "broken.yaml"
    broken.write_text("version: v2alpha\nname: Broken\n")
    code, out = run("validate", "--format", "json", str(tmp_path / "repo"))
    report = json.loads(out)
    assert code == 1
    assert report["workflows"] == 4
    assert {e["path"].rsplit("/", 1)[-1] for e in report["errors"]} == {"broken.yaml"}
    assert {e["field"] for e in report["errors"]} == {"name", "type", "spec"}


def test_every_invalid_golden_file_exits_1_naming_line_and_field() -> None:
    for path in sorted((GOLDEN / "invalid").glob("*.yaml")):
        code, out = run("validate", str(path))
        assert code == 1, path.name
        expected_line = path.read_text().split(":", 2)[1].strip().split()[0]
        assert f"{path.name}:{expected_line}:" in out, (path.name, out)


def test_undefined_variable_then_environment_override(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES_REPO, repo)
    config = repo / ".reconciler.yaml"
    config.write_text(config.read_text().replace("SHARED_VOLUME_ID: customer-batch-shared", ""))
    code, out = run("validate", str(repo))
    assert code == 1
    assert "undefined variable ${SHARED_VOLUME_ID}" in out
    assert out.count("customer-batch-pipeline.yaml:") == 3
    code, out = run("validate", str(repo), env={"RECONCILER_VAR_SHARED_VOLUME_ID": "from-env"})
    assert code == 0, out


def test_duplicate_names_across_files_name_both(tmp_path: Path) -> None:
    text = (EXAMPLES_REPO / "workflows" / "daily-report.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    code, out = run("validate", str(tmp_path))
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2
    assert "a.yaml:1:1: name:" in lines[0]
    assert "also defined at b.yaml:1" in lines[0]
    assert "b.yaml:1:1: name:" in lines[1]
    assert "also defined at a.yaml:1" in lines[1]


def test_workspaces_separate_equal_names(tmp_path: Path) -> None:
    text = (EXAMPLES_REPO / "workflows" / "daily-report.yaml").read_text()
    (tmp_path / "finance").mkdir()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "finance" / "a.yaml").write_text(text)
    (tmp_path / ".reconciler.yaml").write_text(
        "version: v1\nworkspaces:\n  paths:\n    finance: finance\n"
    )
    code, out = run("validate", "--format", "json", str(tmp_path))
    assert code == 0, out


def test_bad_repo_config_is_reported(tmp_path: Path) -> None:
    (tmp_path / ".reconciler.yaml").write_text("version: v1\nvariabels: {}\n")
    code, out = run("validate", str(tmp_path))
    assert code == 1
    assert ".reconciler.yaml:2:1: variabels: unknown field 'variabels'; did you mean" in out


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    code, out = run("validate", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert "no such file or directory" in out


def test_empty_documents_are_notes_not_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    code, out = run("validate", str(tmp_path))
    assert code == 0
    assert "note:" in out


def test_symlink_outside_the_repo_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".reconciler.yaml").write_text("version: v1\n")
    outside = tmp_path / "outside.yaml"
    outside.write_text("secret: true\n")
    (repo / "link.yaml").symlink_to(outside)
    code, out = run("validate", str(repo))
    assert code == 1
    assert "link.yaml: <file>: path leads outside the repository" in out


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_output_format_choice(fmt: str) -> None:
    code, _ = run("validate", "--format", fmt, str(EXAMPLES_REPO))
    assert code == 0


def test_schema_is_json_schema_with_stacks() -> None:
    code, out = run("schema")
    schema = json.loads(out)
    assert code == 0
    assert schema["title"] == "DataOS v2alpha Workflow"
    assert set(schema["required"]) >= {"version", "name", "type", "spec"}
    assert "ContainerSpec" in schema["$defs"]
    step_spec = schema["$defs"]["StepSpec"]
    assert "stackSpec" in step_spec["properties"]
    assert step_spec["allOf"][0]["if"]["properties"]["stack"]["const"] == "container"
