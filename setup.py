from setuptools import find_packages, setup

DISTRIBUTED = [
    "dagster-postgres==0.29.27", "dagster-celery[redis]==0.29.27",
    # The data directory on s3:// (storage/location.py): UPath over s3fs. s3fs pins fsspec
    # to its own release and aiobotocore pins botocore, so these two ranges resolve together
    # (tested: universal_pathlib 0.3.10, s3fs 2026.9.0, aiobotocore 3.10, botocore 1.43).
    "universal_pathlib>=0.3.10,<0.4",
    "s3fs>=2026.9.0,<2027",
]

setup(
    name="churn_assets",
    version="0.2.0",
    description="Keeps a customer-churn model up to date with Dagster software-defined assets.",
    python_requires=">=3.11",
    packages=find_packages(exclude=["churn_assets_tests", "churn_assets_tests.*", "bench"]),
    package_data={"churn_assets.core": ["specs/*.json"]},
    install_requires=[
        # One consistent Dagster release: every dagster-* integration pins dagster==1.13.27
        # exactly (their 0.29.27), and dagster-webserver stops at 1.13.28, so the set is
        # pinned together; a bare `pip install dagster-postgres` would resolve a 2021 release.
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        "pandas>=3,<4",
        "pyarrow>=18",
        "scikit-learn>=1.9,<1.10",
        "pandera>=0.35,<0.36",
        "requests>=2.32",
        # Retry(retry_after_max=...) in the HTTP source needs urllib3 2.6.3.
        "urllib3>=2.6.3",
        "joblib>=1.4",
        # SQL source: SQLAlchemy 2.1 with the psycopg2 driver for postgresql+psycopg2:// URLs.
        "sqlalchemy>=2.1,<2.2",
        "psycopg2-binary>=2.9",
        # Serving (churn-assets serve): ASGI app, uvicorn with uvloop + httptools, orjson.
        "fastapi>=0.115,<1",
        "uvicorn[standard]>=0.30,<1",
        "orjson>=3.10,<4",
        # Batch bodies decoded straight into typed columns (serving/batch_decode.py).
        "msgspec>=0.19,<1",
        # Swagger UI's files for /docs, served by the server itself: the page works offline.
        # fastapi-offline ships Swagger UI 5 (5.32 in 1.7.7), which reads the OpenAPI 3.1
        # FastAPI emits; swagger-ui-bundle's 4.15 cannot ("Unable to render this definition").
        "fastapi-offline>=1.7.7,<2",
        # Model-health plots (PNG) in the UI, the registry and the model card.
        "matplotlib>=3.9,<4",
    ],
    extras_require={
        # Dagster's own engines across machines (docs/deploy.md): the instance in
        # PostgreSQL, steps on Celery workers. Pinned to the integration release that
        # matches dagster==1.13.27 (a bare install resolves a 2021 release).
        "distributed": DISTRIBUTED,
        # The tests exercise the distributed engines too (a real Celery worker on Redis).
        # ... and object storage against moto's S3 server on loopback (MinIO is not needed).
        # Schemathesis 4 (the `st run` CLI and its check names) fuzzes the served API in
        # .ci/run; playwright drives Debian's Chromium for the /docs page test (tested with
        # schemathesis 4.32.5 and playwright 1.65.3 against Chromium 156).
        "dev": ["pytest>=8", "httpx>=0.27", "moto[server]>=5.2.5,<6", "schemathesis>=4.32,<5",
                "playwright>=1.65,<2", *DISTRIBUTED],
        "bench": ["flask>=3,<4"],
    },
    entry_points={"console_scripts": ["churn-assets=churn_assets.cli:main"]},
)
