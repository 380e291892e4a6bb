"""The aiohttp application: app factory, routes, handlers, WebSocket and the CLI."""
