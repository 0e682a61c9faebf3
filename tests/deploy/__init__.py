"""Tests of the Kubernetes installation (deploy/) and the container image (Dockerfile)."""
