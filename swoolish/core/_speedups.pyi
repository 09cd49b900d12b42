# The compiled fast path's pair (swoolish/core/_speedups.c); the pure-Python versions and
# their documentation are in swoolish/core/frames.py.
def next_frame(
    data: bytes, pos: int, limit: int, compressed_ok: int
) -> tuple[int, int, str | bytes | int] | None: ...
def encode_message(data: str | bytes, opcode: int | None) -> bytes: ...

class Frame:
    fd: int
    data: str | bytes
    opcode: int
    finish: bool
    def __init__(self, fd: int, data: str | bytes, opcode: int, finish: bool = True) -> None: ...

def upgrade_head(
    data: bytes, max_fields: int, max_bytes: int
) -> tuple[str, str, list[tuple[str, str]], dict[str, list[str]], int, bool] | None: ...
