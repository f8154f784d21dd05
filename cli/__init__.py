"""The ``flowmaestro`` command line: it composes the others (compiler, engine, API,
deployments, workers, the embedded Prefect server) and is imported by none of them."""
