"""Module sources and their isolated environments (see docs/modules.md)."""
