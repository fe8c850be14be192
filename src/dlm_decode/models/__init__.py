"""Model adapters, loading, the shared tokenizer and the embedded model pair."""
