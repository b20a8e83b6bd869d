"""Release management: write-audit-publish audits, aliases (publish/promote/rollback), export, backfills and the run
report."""
