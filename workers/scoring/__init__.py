"""Scoring images against prompts: CLIP and the other scorers."""
