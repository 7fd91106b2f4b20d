"""Request ids (:func:`opsgate.app.new_request_id`): uuid4's format, random bytes read in batches,
never shared with a forked worker."""

from __future__ import annotations

import os
import uuid

from opsgate.app import REQUEST_IDS_PER_READ, new_request_id


def test_ids_are_uuid4_hex_and_distinct() -> None:
    ids = [new_request_id() for _ in range(3 * REQUEST_IDS_PER_READ)]
    assert len(set(ids)) == len(ids)
    for request_id in ids:
        parsed = uuid.UUID(hex=request_id)
        assert parsed.hex == request_id and len(request_id) == 32
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_forked_child_draws_no_id_of_the_parent() -> None:
    new_request_id()  # the parent now holds unused ids in its buffer
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the ids it would give its next requests
        try:
            os.write(write, "".join(new_request_id() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    child_ids = {child[i:i + 32] for i in range(0, len(child), 32)}
    parent_ids = {new_request_id() for _ in range(REQUEST_IDS_PER_READ)}
    assert len(child_ids) == 8
    assert not child_ids & parent_ids
