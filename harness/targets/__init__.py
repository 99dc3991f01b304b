"""Targets: the servers under test, described by a target file or started by the harness."""
