"""The per-batch generation path inside an actor: generation, batching, adapters, caches, compile."""
