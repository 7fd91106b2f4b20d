"""A loopback aiohttp server standing in for Discord, PagerDuty and Twilio: it accepts every POST
(Discord 204, PagerDuty Events v2 202, Twilio 201 as the real APIs answer) and counts by channel."""

from __future__ import annotations

from collections import Counter

from aiohttp import web

DISCORD_PATH = "/api/webhooks/1/rehearsal"
PAGERDUTY_PATH = "/v2/enqueue"
TWILIO_PREFIX = "/2010-04-01/Accounts/"


class AlertReceiver:
    """``counts``: deliveries per channel (``discord``, ``pagerduty``, ``sms``); ``bodies``: the
    raw request bodies (scanned for leaked secrets by the report)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.bodies: list[bytes] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on a free loopback port; sets :attr:`base_url`."""
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Stop listening. Idempotent."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        if request.path == DISCORD_PATH:
            self.counts["discord"] += 1
            return web.Response(status=204)
        if request.path == PAGERDUTY_PATH:
            self.counts["pagerduty"] += 1
            return web.json_response({"status": "success", "message": "Event processed"}, status=202)
        if request.path.startswith(TWILIO_PREFIX):
            self.counts["sms"] += 1
            return web.json_response({"sid": f"SM{len(self.bodies):032d}", "status": "queued"}, status=201)
        self.counts["other"] += 1
        return web.json_response({"message": "unknown path"}, status=404)
