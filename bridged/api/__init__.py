"""The HTTP API: thin aiohttp handlers over the same services the phone path uses."""
