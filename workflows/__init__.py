"""Phasegate's workflows: the launch, one workflow per phase, and the helpers they share."""
