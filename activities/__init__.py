"""Activities: everything Phasegate does to the outside world, grouped by the system it touches."""
