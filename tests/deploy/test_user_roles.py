"""The ClusterRoles for people (deploy/rbac-users): valid, aggregated, and each a superset of
the one below; none touches Secrets or the reconciler's own objects' status."""

from __future__ import annotations

from pathlib import Path

from tests.kube.schemas import kustomize_build, rbac_grants, validate_object

ROLES = Path(__file__).resolve().parents[2] / "deploy" / "rbac-users"


def test_the_user_roles_render_validate_and_aggregate() -> None:
    objects = kustomize_build(ROLES)
    by_name = {o["metadata"]["name"]: o for o in objects}
    assert sorted(by_name) == ["workflow-admin", "workflow-user", "workflow-viewer"]
    for obj in objects:
        assert validate_object(obj) == [], obj["metadata"]["name"]
        for rule in obj["rules"]:
            assert not any("secret" in r or "status" in r for r in rule["resources"]), rule
            assert "*" not in rule["verbs"]
    labels = {name: obj["metadata"]["labels"] for name, obj in by_name.items()}
    assert labels["workflow-viewer"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert labels["workflow-user"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["workflow-admin"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"

    def grants(name: str) -> set[tuple[str, str, str]]:
        table = rbac_grants([by_name[name]])["ClusterRole"]
        return {(g, r, v) for (g, r), verbs in table.items() for v in verbs}

    viewer, user, admin = (
        grants("workflow-viewer"),
        grants("workflow-user"),
        grants("workflow-admin"),
    )
    assert viewer < user < admin
    assert ("reconciler.dev", "workflowruns", "create") in user - viewer  # trigger
    assert ("reconciler.dev", "workflowruns", "patch") in user - viewer  # cancel
    assert ("reconciler.dev", "workflows", "patch") in admin - user  # suspend, resume
    assert not any(verb in ("create", "delete") and res == "workflows" for _, res, verb in admin)
