"""The `phasegate` command line and the client-side functions behind it."""
