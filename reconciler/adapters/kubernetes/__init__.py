"""The Kubernetes backend: Workflow and WorkflowRun custom resources, steps as Jobs."""
