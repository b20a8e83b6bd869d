"""Infrastructure adapters (storage, manifests, tracking, models, services). Used by tasks and flows only."""
