"""Autoregressive WaveNet teachers (built on `distill`)."""
