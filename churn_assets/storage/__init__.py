"""Durable state on disk or object storage: the customer history and the model registry."""
