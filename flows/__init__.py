"""Prefect flows (the nightly factory and one per stage), recipes and the `rlt` CLI. Wiring only."""
