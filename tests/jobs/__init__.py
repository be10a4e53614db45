"""Job tests: whole jobs on the test session's one Ray instance and its actors."""
