"""The optional C accelerator of the WebSocket fast path (swoolish/core/_speedups.c).

Everything else is in pyproject.toml. ``optional=True``: without a C compiler or
Python's headers the build skips it and swoolish runs its pure-Python path
(docs/performance.md, "The compiled fast path").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "swoolish.core._speedups",
            ["swoolish/core/_speedups.c"],
            optional=True,
        )
    ]
)
