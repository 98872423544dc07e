"""Dagster integration for batchor (resource, asset factories, sensor): arrives in a later issue."""

__all__: list[str] = []
