"""The real Hub: a small async web service over SQLite with a device API in Pantahub's spirit,
an operator API, and a live dashboard (docs/hub.md). Rollout decisions come from shared.rollout."""
