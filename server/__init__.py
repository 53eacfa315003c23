"""fedavg orchestrator: the pure core (shard plans, rounds, aggregation) and the aiohttp app."""
