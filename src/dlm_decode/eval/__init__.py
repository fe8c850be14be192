"""Evaluation: the checkable task suite the embedded models are trained and measured on."""
