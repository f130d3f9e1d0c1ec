"""The inspection layer: image → LFV pre-processing → runner → LFV verdict. No threads, no I/O.

Uses the model layer; knows nothing of requests, transports or configuration files.
"""
