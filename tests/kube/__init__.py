"""A local Kubernetes API server for the tests (see emulator.py)."""
