"""Codecs: bytes -> pixels -> model tensors, and model outputs -> masks -> bytes. No I/O, no state."""
