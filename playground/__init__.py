"""Demo and pictures of AOT on a real video (``python -m playground.demo``, ``playground.sweep``).

Nothing here is imported by ``aot`` or ``llava``; the playground only uses their public APIs.
"""
