"""A small user plugin package, as a research team would keep it in S3 or a local folder.

``acme.ops`` holds task plugins; ``acme.flows`` holds entry points that compose them, which an
Experiment names with ``spec.entryPoint.module: acme.flows.items:flow``.
"""
