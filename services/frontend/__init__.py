"""Frontend: the public entry (queries, feedback, management, container registry)."""
