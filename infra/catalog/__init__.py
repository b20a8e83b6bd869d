"""Where artifacts live and how they are known: the object store, the DuckLake catalog (the one truth of "done"),
crash-safe locks, artifact writers, the read-only query guard and the catalog's PostgreSQL roles."""
