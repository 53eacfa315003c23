"""The orchestrator's pure core: rounds, shard plans, aggregation and evaluation.

No asyncio, aiohttp, sqlite3 or structlog here, and no environment reads: plain data and
tensors in, plain data and tensors out, so every rule is unit-testable on its own.
"""
