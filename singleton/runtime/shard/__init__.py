"""Sharding: groups of jobs spread across replicas, each group with its own leader key and term (Config.shard)."""
