"""Recipes built on the library: training the embedded model pair (:mod:`.train_embedded`)."""
