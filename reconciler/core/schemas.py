"""JSON Schema of the Workflow manifest, for editors (yaml-language-server) and docs.

pydantic gives the schema of the wire models; each registered stack adds an
``if stack == NAME then stackSpec is NAME's spec`` rule, so editors complete
``stackSpec`` too.
"""

from __future__ import annotations

from typing import Any

from reconciler.core.manifests import Workflow
from reconciler.core.stacks import find_stack, known_stacks


def workflow_json_schema() -> dict[str, Any]:
    schema = Workflow.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "DataOS v2alpha Workflow"
    definitions: dict[str, Any] = schema.setdefault("$defs", {})
    rules = []
    for name in known_stacks():
        stack = find_stack(name)
        assert stack is not None
        stack_schema = stack.spec_model.model_json_schema(
            by_alias=True, ref_template="#/$defs/{model}"
        )
        definitions.update(stack_schema.pop("$defs", {}))
        key = f"{stack.spec_model.__name__}"
        definitions[key] = stack_schema
        rules.append(
            {
                "if": {"properties": {"stack": {"const": name}}, "required": ["stack"]},
                "then": {"properties": {"stackSpec": {"$ref": f"#/$defs/{key}"}}},
            }
        )
    step_spec = definitions["StepSpec"]
    step_spec["allOf"] = rules
    step_spec["properties"]["stack"]["anyOf"] = [
        {"enum": list(known_stacks())},
        {"type": "null"},
    ]
    return schema
