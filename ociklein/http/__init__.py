"""
The HTTP side of the registry: Klein routes, streaming request bodies, blob
downloads and the plain-HTTP guard.  Thin: parse, call the core, format.
"""
