"""Fixtures for the export stage's tests (and the stages that build on it)."""
