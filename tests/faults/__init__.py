"""Fault-injection scenarios: real worker and redis-server processes, real signals."""
