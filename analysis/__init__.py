"""Figures and tables from Parquet alone (never imports torch, ray or mlflow)."""
