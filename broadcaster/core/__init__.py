"""The broadcaster's pure core: states, the channel timeline, late-join maths.

Nothing in this package performs I/O or reads a clock; every call that depends
on time takes `now_ms` (server time, integer Unix epoch milliseconds).
"""
