"""The service's routers: jobs (submit, status, tickets, reports, cancel) and health (healthz, metrics)."""
