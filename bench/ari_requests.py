"""``python -m bench.ari_requests``: the CPU bridged's ARI client spends on a phone call's requests, the
transport left out (issue 19).

The eight requests of a bridged phone call (the customer's leg originated into the dialplan with its
variables and the application subscribed to it, answer, create bridge, the label put back on the
customer's leg, add channels, hangup, destroy bridge)
go through :class:`AriClient` as the call's steps make them, against a transport that answers at once
from memory: what is measured is the client's own Python work per request (the node's client chosen,
checking and encoding the parameters, the target, the overload guard's bookkeeping, the request's
timeout, decoding the answer), not sockets. Run on uvloop as the daemon runs; reports CPU time
(``time.process_time``) per request, best of ``--rounds``.

    python -m bench.ari_requests [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import aiohttp
import uvloop

from bridged.ari import AriAccess, AriClient
from bridged.ari.nodes import NodeClients

_CHANNEL = b'{"id": "x-customer", "name": "PJSIP/carrier-00000001", "state": "Down", "caller": {}}'
_BRIDGE = b'{"id": "x-bridge", "technology": "simple_bridge", "bridge_type": "mixing", "channels": []}'
REQUESTS_PER_CALL = 8


class _Answers:
    """Stands in for bridged.ari.transport.HttpTransport: the answer Asterisk gives each request."""

    async def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        if method == "POST" and target.startswith("/ari/channels?"):
            return 200, _CHANNEL
        if method == "POST" and target.startswith("/ari/bridges?"):
            return 200, _BRIDGE
        return 204, b""

    async def close(self) -> None:
        return None


async def _call(client: AriClient, variables: dict[str, str]) -> None:
    call = uuid.uuid4().hex
    manager, customer, bridge = f"rig-{call[:12]}.42", f"{call}-customer", f"{call}-bridge"
    await client.originate_to_dialplan(
        endpoint="PJSIP/+4930123456789@carrier",
        context="bridged-customer",
        extension="s",
        channel_id=customer,
        caller_id='"Shop" <+4930000000>',
        timeout=30,
        originator=manager,
        variables={**variables, "BRIDGED_LEG_APP": "bridged", "BRIDGED_CALL": call},
    )
    await client.subscribe("bridged", [f"channel:{customer}"])
    await client.answer(manager)
    await client.create_bridge(bridge, type="mixing", name=f"bridged-{call}")
    await client.set_variable(customer, "CALLERID(all)", '"Order 10001 Ivan P." <*7710001>')
    await client.add_channel(bridge, [manager, customer], inhibit_connected_line_updates=True)
    await client.hangup(customer)
    await client.destroy_bridge(bridge)


async def _round(calls: int) -> float:
    async with aiohttp.ClientSession() as session:
        node = AriClient(session, AriAccess("http://127.0.0.1:8088/ari", "bridged", "s3cret"))
        node._transport = _Answers()  # type: ignore[assignment]
        client = NodeClients({"asterisk": node})  # as the daemon makes its requests, one node or several
        variables: dict[str, Any] = {
            "CHANNEL(language)": "en",
            "PJSIP_TRANSFER_HANDLING()": "ari-only",
            "CONNECTED_LINE_SEND_SUB": "bridged-label,s,1",
        }
        for _ in range(200):  # warm up
            await _call(client, variables)
        start = time.process_time()
        for _ in range(calls):
            await _call(client, variables)
        return (time.process_time() - start) / (calls * REQUESTS_PER_CALL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = [uvloop.run(_round(args.calls)) for _ in range(args.rounds)]
    each = ", ".join(f"{r * 1e6:.1f}" for r in results)
    print(f"ARI client CPU per request: best {min(results) * 1e6:.1f} µs (rounds: {each})")


if __name__ == "__main__":
    main()
