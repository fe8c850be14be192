"""Helpers for testing dlm_decode and its plugins: tiny models, fixtures, Hypothesis strategies."""
