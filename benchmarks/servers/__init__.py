"""Reference echo servers for the benchmark suite; each is a script taking ``--port``."""
