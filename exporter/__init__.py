"""aitools-memory-exporter: memory budgets of an AI developer workstation as Prometheus gauges."""

__version__ = "0.1.0"
