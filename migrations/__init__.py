"""Alembic migrations for every table txc owns: branch `coordinator` (a node's database) and
branch `participant` (the SDK's record in a participant's database, and the demo's tables)."""
