"""The local stack for demos and tests: the Temporal dev server, Prometheus, the demo service
and its load, a Kubernetes control plane, PostgreSQL clusters and certificates, each a real
process on free loopback ports; and the demos that run launches against them."""
