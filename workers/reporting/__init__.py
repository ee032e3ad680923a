"""Presenting a correction: the HTML page and its plots, the report's JSON Schema, and writing a
job's output files. The engine computes the report (a plain dict); this package only renders and
stores it, so the engine stays free of templating and plotting libraries."""
