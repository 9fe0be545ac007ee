"""Grafana dashboards, Prometheus alert rules and scrape configuration (docs/observability.md)."""
