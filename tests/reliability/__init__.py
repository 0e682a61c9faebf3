"""Reliability and security tests: races, hostile input, secrets."""
