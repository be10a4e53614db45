"""What several test files share, by topic: run folders built directly, images, the hub cache, fake actors.

Fixtures stay in tests/conftest.py; independent reference computations in tests/reference.py.
"""
