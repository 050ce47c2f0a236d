"""Runnable examples Phasegate launches against: a demo service and its load generator."""
