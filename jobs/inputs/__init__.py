"""Prompt inputs: manifests, prompt import, templates and the shard planner."""
