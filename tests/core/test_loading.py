"""Loading files: file-level failures, multi-document files, the seed's fragments, the schema."""

from __future__ import annotations

import time

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from reconciler.core.loading import (
    combine_files,
    load_manifest_file,
    load_manifest_set,
    load_repo_config,
)
from reconciler.core.manifests import Workflow, normalized_spec
from reconciler.core.repoconfigs import RepoConfig
from reconciler.core.schemas import workflow_json_schema
from tests.conftest import EXAMPLES_REPO, GOLDEN

HEADER = "version: v2alpha\nname: fragment\ntype: workflow\n"


def load(text: str | bytes, **kwargs: object):  # type: ignore[no-untyped-def]
    data = text.encode() if isinstance(text, str) else text
    return load_manifest_file("w.yaml", data, workspace="public", variables={}, **kwargs)  # type: ignore[arg-type]


def test_seed_dag_fragment_works_with_no_op_steps() -> None:
    # The seed's "Workflow and DAG" example: steps with `spec: {}`.
    result = load(
        HEADER
        + """spec:
  dag:
    - name: extract
      spec: {}
    - name: validate
      depends:
        - extract
      spec: {}
    - name: publish
      depends:
        - validate
      spec: {}
"""
    )
    assert result.errors == ()
    (workflow,) = result.workflows
    assert [s.name for s in workflow.manifest.spec.dag] == ["extract", "validate", "publish"]
    assert all(s.spec.stack is None for s in workflow.manifest.spec.dag)


def test_seed_syntax_template_reports_unfilled_placeholders() -> None:
    text = """version: v2alpha
name: ${{workflow-name}}
type: workflow
tags:
  - ${{tag1}}
spec:
  schedule:
    crons:
      - ${{cron-expression}}
    timezone: UTC
    concurrencyPolicy: Forbid
  dag:
    - name: ${{step-name}}
      spec:
        stack: ${{stack-name}}
"""
    result = load(text)
    fields = [e.field for e in result.errors]
    assert fields == [
        "name",
        "tags[0]",
        "spec.schedule.crons[0]",
        "spec.dag[0].name",
        "spec.dag[0].spec.stack",
    ]
    assert all("is not filled in" in e.message for e in result.errors)


def test_non_utf8_file_names_the_byte() -> None:
    result = load(b"version: v2alpha\nname: caf\xe9\n")
    (error,) = result.errors
    assert (error.line, error.column) == (2, 10)
    assert "UTF-8" in error.message


def test_oversized_file_is_refused_with_the_limit() -> None:
    result = load(HEADER + "description: " + "x" * 5000 + "\n", max_bytes=4096)
    (error,) = result.errors
    assert error.line == 1
    assert "4,096 bytes" in error.message


@pytest.mark.timeout(20)
def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 10):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    started = time.monotonic()
    result = load("\n".join(lines) + "\n")
    elapsed = time.monotonic() - started
    (error,) = result.errors
    assert "alias" in error.message
    assert elapsed < 5  # generous: the expansion would be 10**10 nodes


def test_errors_in_several_documents_each_have_their_line() -> None:
    text = (GOLDEN / "valid" / "multi-document.yaml").read_text()
    text = text.replace("name: first-of-two", "name: First").replace(
        "name: second-of-two", "name: Second"
    )
    result = load(text)
    assert [(e.line, e.field) for e in result.errors] == [(4, "name"), (18, "name")]
    assert len(result.notes) == 1
    assert "empty" in result.notes[0].message


def test_one_bad_document_keeps_the_other() -> None:
    text = (
        (GOLDEN / "valid" / "multi-document.yaml")
        .read_text()
        .replace("name: second-of-two", "name: Second")
    )
    result = load(text)
    assert [w.manifest.name for w in result.workflows] == ["first-of-two"]
    assert len(result.errors) == 1


def test_merge_key_fills_step_spec() -> None:
    result = load((GOLDEN / "valid" / "multi-document.yaml").read_bytes())
    second = result.workflows[1].manifest
    assert second.spec.dag[1].spec.stack == "container"
    assert second.spec.dag[1].spec.compute == "runnable-default"


def test_workflow_built_in_code_enforces_semantics() -> None:
    data = yaml.safe_load(HEADER + "spec:\n  dag:\n    - name: a\n      depends: [a]\n")
    with pytest.raises(ValidationError, match="cannot depend on itself"):
        Workflow.model_validate(data)


def test_models_are_frozen() -> None:
    (workflow,) = load((EXAMPLES_REPO / "workflows" / "daily-report.yaml").read_bytes()).workflows
    with pytest.raises(ValidationError):
        workflow.manifest.name = "other"  # type: ignore[misc]


def test_normalized_spec_fills_defaults() -> None:
    (workflow,) = load((EXAMPLES_REPO / "workflows" / "daily-report.yaml").read_bytes()).workflows
    spec = normalized_spec(workflow.manifest)
    assert spec["spec"]["type"] == "instance"
    assert spec["spec"]["dag"][0]["depends"] == []
    assert spec["spec"]["dag"][0]["spec"]["resources"]["requests"]["cpu"] == "100m"


def test_secret_alias_defaults_from_id() -> None:
    text = (
        HEADER
        + """spec:
  use:
    projection:
      secrets:
        - id: db-credentials
      projections:
        envVars:
          - key: PASSWORD
            value: "{{.secrets.db_credentials.PASSWORD}}"
  dag:
    - name: main
      spec: {}
"""
    )
    assert load(text).errors == ()


def test_step_secret_is_not_in_scope_of_other_steps() -> None:
    text = (
        HEADER
        + """spec:
  dag:
    - name: a
      spec:
        use:
          projection:
            secrets: [{id: s, contextAlias: mine}]
    - name: b
      spec:
        use:
          projection:
            projections:
              envVars:
                - key: X
                  value: "{{.secrets.mine.KEY}}"
"""
    )
    (error,) = load(text).errors
    assert error.field == "spec.dag[1].spec.use.projection.projections.envVars[0].value"


def test_workspace_mapping_longest_prefix() -> None:
    config = RepoConfig.model_validate(
        {"workspaces": {"default": "public", "paths": {"teams": "teams", "teams/fin/": "finance"}}}
    )
    text = (EXAMPLES_REPO / "workflows" / "daily-report.yaml").read_bytes()
    result = load_manifest_set(
        {
            "teams/fin/a.yaml": text,
            "teams/b/c.yaml": text.replace(b"daily-report", b"other"),
            "x.yaml": text.replace(b"daily-report", b"third"),
        },
        config=config,
        variables={},
    )
    assert sorted(result.workflows) == ["finance/daily-report", "public/third", "teams/other"]


def test_repo_config_errors_have_positions() -> None:
    config, problems = load_repo_config(b"version: v1\nworkspaces:\n  default: Public\n")
    assert isinstance(config, RepoConfig)
    (problem,) = problems
    assert (problem.path, problem.line, problem.field) == (
        ".reconciler.yaml",
        3,
        "workspaces.default",
    )


def test_examples_repo_config_loads() -> None:
    config, problems = load_repo_config((EXAMPLES_REPO / ".reconciler.yaml").read_bytes())
    assert problems == ()
    assert config.variables == {"SHARED_VOLUME_ID": "customer-batch-shared"}


def test_combine_files_of_nothing_is_complete() -> None:
    result = combine_files([])
    assert result.complete
    assert result.workflows == {}


def test_json_schema_accepts_examples_and_rejects_unknown_stack_spec_fields() -> None:
    schema = workflow_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((EXAMPLES_REPO / "workflows").glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        assert list(validator.iter_errors(document)) == [], path.name
    bad = yaml.safe_load((EXAMPLES_REPO / "workflows" / "daily-report.yaml").read_text())
    bad["spec"]["dag"][0]["spec"]["stackSpec"]["imag"] = "typo"
    assert list(validator.iter_errors(bad))


def test_examples_round_trip_through_normalized_yaml() -> None:
    for path in sorted((EXAMPLES_REPO / "workflows").glob("*.yaml")):
        result = load_manifest_file(
            path.name, path.read_bytes(), workspace="public", variables={"SHARED_VOLUME_ID": "v"}
        )
        (workflow,) = result.workflows
        dumped = yaml.safe_dump(normalized_spec(workflow.manifest))
        assert Workflow.model_validate(yaml.safe_load(dumped)) == workflow.manifest
