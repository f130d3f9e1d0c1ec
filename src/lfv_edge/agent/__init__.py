"""A drop-in for the LFV Edge Agent: the `AWS.LookoutVision.EdgeAgent` gRPC API on a Unix socket.

    agent/
    ├── edge-agent.proto        the API (package AWS.LookoutVision, service EdgeAgent)
    ├── edge_agent_pb2*.py[i]   generated from it by protogen.py (committed; do not edit)
    ├── registry.py             named models: lifecycle, a thread and a bounded queue each
    ├── server.py               the servicer, the socket, `AgentServer`; the only grpc user
    └── shm.py                  POSIX shared memory images and masks

Run it with `lfv-edge agent` (commands/agent.py), or embed `AgentServer` in another process.
Import from the modules (`lfv_edge.agent.server.AgentServer`, …): importing this package
itself loads nothing, so `lfv-edge --help` stays fast.
"""
