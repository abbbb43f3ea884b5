"""Model-health monitoring: feature/prediction/target drift, diagnostic plots, importance and model cards."""
