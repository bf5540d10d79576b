"""Backends: where tasks run. ``base`` holds the contract and the one name -> class registry."""
