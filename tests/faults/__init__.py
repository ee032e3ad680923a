"""Fault injection against real processes: Redis outages, racing clients."""
