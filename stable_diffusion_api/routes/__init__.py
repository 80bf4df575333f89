"""Thin routers: `api` (JSON under /api/v1), `events` (SSE), `pages` (Jinja)."""
