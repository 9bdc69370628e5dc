"""Demo Django project showing broker_ws wired to a stand-in broker backend."""
