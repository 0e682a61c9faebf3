"""A GitOps reconciler daemon for DataOS v2alpha batch Workflows."""

__version__ = "0.1.0"
