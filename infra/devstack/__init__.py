"""The local services of `rlt stack`: PostgreSQL, SeaweedFS S3, MLflow and Prefect servers, a local Ray cluster and
vLLM servers, supervised as processes on this host."""
