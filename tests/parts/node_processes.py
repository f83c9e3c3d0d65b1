"""Real-part fixtures; see tests/conftest.py."""
