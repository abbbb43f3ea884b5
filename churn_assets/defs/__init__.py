"""The Dagster layer: assets, the deployment-gate check, resources, schedules and sensors."""
