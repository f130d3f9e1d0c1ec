"""The service layer: configuration schema, wire format, the threaded pipeline and its ports.

`wiring` builds the running objects from a configuration for every entry point; transports,
the Edge Agent and capture sources plug in through `ports`.
"""
