"""batchor's example Dagster project: product reviews classified through the Batch API."""
