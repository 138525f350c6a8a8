"""The trainer service: a jobs API (FastAPI), Celery workers that run `specserve train`, a SQLAlchemy job store."""
