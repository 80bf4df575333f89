"""Thin routers: `api` (JSON under /api/v1), `events` and `project_events` (SSE), `pages`
(Jinja)."""
