"""Pithos: a content-addressed block store and everything built as maps over it."""

__version__ = "0.1.0"
