"""Example pipelines for rrq-flow (importable so that their handlers can be referenced)."""
