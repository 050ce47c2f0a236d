"""The worker process that runs every Phasegate workflow and activity, and the shared client."""
