"""FlowMaestro's own records: workflows with immutable versions, and executions.

Used by the API (owner-scoped reads and writes) and by workers (a run loads its canvas,
resolves its sub-workflows and records its start and its result here), so it imports
neither ``api`` nor Prefect. SQLite by default, PostgreSQL in production.
"""
