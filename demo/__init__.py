"""The quickstart demo: one masked call on real parts, then the verdict "number reached the manager: NO".

``python -m demo`` (or ``scripts/demo``) starts, inside its own network namespace, a throwaway PostgreSQL with
a shop ``orders`` table, Asterisk 22 with the repo's dialplan, bridged as a subprocess, a SIPp manager phone
and a SIPp carrier, places one call, prints what happened and stops everything. ``run_demo`` is the same call
on an Asterisk and PostgreSQL that are already running (the end-to-end tests use the session rig).

Not installed with bridged: run it from the repository root (it reuses ``rig/`` and the e2e harness).
"""

from demo.core import DemoCall, DemoResult, run_demo

__all__ = ["DemoCall", "DemoResult", "run_demo"]
