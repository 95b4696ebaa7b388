"""The FastAPI decision service."""
