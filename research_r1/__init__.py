"""research_r1: train LLMs with GRPO to reason and call a search engine (Search-R1, ReSearch)."""

__version__ = "0.1.0"
