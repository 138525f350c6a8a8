"""The OpenAI-compatible REST gateway: FastAPI app, settings, metrics and the embedded mode."""
