"""Run lifecycles: a run, a sweep and a rescore, all on one actor-group lifecycle."""
