"""seqbench: a benchmark harness for sequence models.

Kept import-free so that `bench --help`, `bench list` and input errors answer without
loading torch, Lightning or MLflow.
"""

__version__ = "0.1.0"
