"""Bulk vectors in and out: the Parquet import format, import jobs, export."""
