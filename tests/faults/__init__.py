"""Fault tests: signals, kills and node loss, in processes and clusters of their own."""
