"""Transport adapters: MQTT (paho), Greengrass IPC (awsiot), in-process memory, the reply spool.

Each implements `lfv_edge.service.ports.Transport`; the service core knows only that port.
"""
