"""Real-time churn predictions from the production model (``churn-assets serve``).

See docs/serving.md. Modules: ``fast_path`` (the fitted pipeline compiled to arrays:
the encoding there, the classifier and calibrator in ``scorers``, boosted trees'
batches by ``leaf_tables``),
``schema`` (request checks generated from the model's feature spec), ``model_store``
(verified loading and hot reload from the registry), ``predict_endpoint`` (POST /predict
and the per-request limits), ``app`` (the ASGI app), ``guard`` (uvicorn's protocol with
header and body deadlines) and ``server`` (uvicorn with one or more workers).
"""
