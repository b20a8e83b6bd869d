"""What runs a declared stage: the declaration and its key, the runner (lock, MLflow run, commit, costs, lineage
events), shards and their executors (threads, Ray), row reuse across nights, generation endpoints and loaded models.
The stages themselves are in tasks/."""
