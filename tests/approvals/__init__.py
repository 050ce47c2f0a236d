"""Tests of the approval service, against a real identity provider."""
