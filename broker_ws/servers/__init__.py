"""What broker_ws knows of the ASGI servers it runs under (daphne, uvicorn)."""
