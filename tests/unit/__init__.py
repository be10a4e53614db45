"""Unit tests: no Ray; actor code runs in-process."""
