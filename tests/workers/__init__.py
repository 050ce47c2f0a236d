"""Tests of the worker: its settings and the seals on messages between workflows."""
