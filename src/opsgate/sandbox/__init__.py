"""Provider sandboxes: loopback servers speaking the Anthropic Messages, DeepSeek (OpenAI Chat
Completions) and Gemini generateContent wire formats, with fault profiles for tests, rehearsals
and benchmarks. See :mod:`opsgate.sandbox.app` for the routes and :mod:`opsgate.sandbox.faults`
for the profiles."""

from opsgate.sandbox.app import create_app
from opsgate.sandbox.faults import FaultProfile, FaultProfileError
from opsgate.sandbox.instance import UnsupportedSchemaError, instance_for
from opsgate.sandbox.server import (
    SandboxServer,
    SandboxThread,
    run_sandbox_forever,
    running_sandbox,
)

__all__ = [
    "FaultProfile",
    "FaultProfileError",
    "SandboxServer",
    "SandboxThread",
    "UnsupportedSchemaError",
    "create_app",
    "instance_for",
    "run_sandbox_forever",
    "running_sandbox",
]
