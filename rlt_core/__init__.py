"""Pure ML core of rlt-factory: prompt formats, the RLT reward, generation, training, grading.

Imports none of prefect, fsspec/s3fs, duckdb or mlflow: usable from a notebook.
"""
