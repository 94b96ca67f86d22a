"""tympan: environmental sound classification you can trust in the field, and distrust when due."""

__version__ = "0.1.0"
