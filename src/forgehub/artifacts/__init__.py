"""Artifacts: content addressing, connections, the local cache."""
