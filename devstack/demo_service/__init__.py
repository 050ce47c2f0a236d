"""The checkout demo: a service that routes each user to a stable or canary path by a flagd flag.

`app` builds the service, `__main__` runs it, `load` drives traffic at it. Nothing is imported
here so the load generator starts without the service's OpenFeature dependencies.
"""
