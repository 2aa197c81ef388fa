"""Benchmarks that print figures for the README (never run by the tests' timers)."""
