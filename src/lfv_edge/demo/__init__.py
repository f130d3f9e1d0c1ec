"""The demo: a synthetic production line and the embedded demo package."""
