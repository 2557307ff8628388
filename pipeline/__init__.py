"""CLI, experiment presets, stages, and the Parquet/MLflow writers."""
