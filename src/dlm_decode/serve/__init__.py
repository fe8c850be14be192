"""An OpenAI-compatible server with step-level continuous batching (``dlm-decode serve``, docs/serve.md)."""
