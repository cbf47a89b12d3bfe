"""Test suites third-party adapters can run: ``forgehub.testing.storage``."""
