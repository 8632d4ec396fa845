"""Fixtures for the train stage's tests (and the stages that build on it)."""
