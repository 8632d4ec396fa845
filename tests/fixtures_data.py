"""Fixtures for the data stage's tests (and the stages that build on it)."""
