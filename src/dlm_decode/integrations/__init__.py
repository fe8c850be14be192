"""Integrations with engines dlm_decode does not reimplement: lm-evaluation-harness (:mod:`.lm_eval`)."""
