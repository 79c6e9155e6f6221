"""The test suite's homeserver: `bridge.dev.synapse.SynapseServer` (shared with `chatarchief demo`).

It lives in the package so the demo can use it without importing test code;
this module only re-exports it for tests.
"""

from bridge.dev.synapse import DevServerError, SynapseServer, default_synapse_python, free_port

__all__ = ["DevServerError", "SynapseServer", "default_synapse_python", "free_port"]
