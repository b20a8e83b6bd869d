"""Prefect tasks: one module per stage, thin adapters (load -> core -> validate -> write -> register -> log)."""
