"""Built-in strategies, one module per role. They register through ``dlm_register`` like any third-party plugin."""
