"""MLflow on the driver: tracking, the registry gate, and serving (pyfunc, packaging, batch job)."""
