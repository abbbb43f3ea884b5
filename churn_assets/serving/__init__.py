"""Real-time churn predictions from the production model (``churn-assets serve``).

See docs/serving.md. Modules: ``fast_path`` (the fitted pipeline compiled to arrays),
``schema`` (request checks generated from the model's feature spec), ``model_store``
(verified loading and hot reload from the registry), ``app`` (the ASGI app) and
``server`` (uvicorn with one or more workers).
"""
