"""Durable state on disk: the customer history and the model registry."""
