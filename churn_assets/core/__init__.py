"""Pure churn-model logic: no Dagster, FastAPI, requests or SQLAlchemy imports."""
