"""Loading models: pipelines, the weights check, families, schedulers and the tiny built-ins."""
