"""LLM-as-recommender workflow: every stage's logic; Snakemake rules call `workflow.cli`."""

__version__ = "0.1.0"
