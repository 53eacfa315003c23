"""The orchestrator's HTTP and WebSocket face: routes, sockets, auth, guards and transfers."""
