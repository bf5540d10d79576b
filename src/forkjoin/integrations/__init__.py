"""Bridges from other libraries' parallel APIs onto forkjoin pools (imported on demand)."""
