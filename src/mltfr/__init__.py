"""MLTFR study: LLM token tables for ID-based sequential recommenders."""
__version__ = "0.1.0"
