"""Dask computations as OpenTelemetry traces: the mapping, OTLP requests, the export."""
