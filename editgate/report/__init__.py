"""Reports and regression tracking: the run as versioned JSON, a self-contained HTML page, a run
history, and comparisons between runs. ``python -m editgate.report --help`` re-renders and compares
stored runs; :mod:`editgate.report.plugin` produces them at the end of a pytest session."""

from editgate.report.schema import SCHEMA, SCHEMA_VERSION, RunReport, SchemaError, load_run, save_run

__all__ = ["SCHEMA", "SCHEMA_VERSION", "RunReport", "SchemaError", "load_run", "save_run"]
