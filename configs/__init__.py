"""Shipped per-model GSA configs (JSON), installed as ``gsa.configs``."""
