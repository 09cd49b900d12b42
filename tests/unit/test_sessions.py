from __future__ import annotations

import os

import pytest

from swoolish.shared.ids import (
    BLOCK,
    MAX_NODE,
    NODE_SHIFT,
    IdAllocator,
    LocalIdSource,
    SharedIdSource,
)


def test_ids_are_positive_and_increasing():
    ids = IdAllocator(LocalIdSource())
    drawn = [ids.next_id() for _ in range(3 * BLOCK)]
    assert drawn[0] == 1
    assert drawn == sorted(set(drawn))


def test_two_workers_on_one_source_never_share_an_id():
    source = LocalIdSource()
    a, b = IdAllocator(source), IdAllocator(source)
    drawn = [x.next_id() for _ in range(2 * BLOCK) for x in (a, b)]
    assert len(set(drawn)) == len(drawn)


def test_node_number_is_kept_in_the_high_bits_and_below_2_53():
    ids = IdAllocator(LocalIdSource(), node=MAX_NODE)
    sid = ids.next_id()
    assert sid >> NODE_SHIFT == MAX_NODE
    assert sid < 2**53
    with pytest.raises(ValueError):
        IdAllocator(LocalIdSource(), node=MAX_NODE + 1)


def test_shared_source_is_shared_across_fork():
    """A child forked from the master draws blocks from the same counter."""
    source = SharedIdSource()
    first = source.take_block()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: take one block and report it
        os.write(write_fd, str(source.take_block()).encode())
        os._exit(0)
    os.close(write_fd)
    child_block = int(os.read(read_fd, 64))
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert child_block == first + BLOCK
    assert source.take_block() == first + 2 * BLOCK
