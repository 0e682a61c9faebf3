"""The embedded local backend: applied state in SQLite under a state directory.

It is the default backend, so a single machine (a laptop, a CI job, one pod)
can reconcile and run Workflows without a Kubernetes cluster. It never
imports the Kubernetes backend; both meet only at ``reconciler.ports``.
"""
