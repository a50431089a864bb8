"""The audit side of a finished run, without models: report, explain, diff, warnings.

Everything here reads a run folder through :mod:`curation.audit.tables` and streams its
tables with pyarrow; no torch, no Beam.
"""
