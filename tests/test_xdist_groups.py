"""`make test` spreads the suite over pytest-xdist workers with `--dist loadgroup`, and conftest.py
groups the tests (by file, and every reader of the shared tiny run together) so that each
expensive fixture is built once. xdist marks a grouped test by appending `@group` to its node id;
a pytest / xdist pair that loses that suffix schedules the tests as plain `load` does, silently,
and the suite builds the tiny workflow run once per worker (about 8 more CPU minutes)."""
import os

import pytest


def test_the_worker_sees_this_files_group(request):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by an xdist worker under --dist loadgroup (make test runs it so)")
    assert os.environ.get("PYTEST_XDIST_WORKER"), "loadgroup is set only in xdist workers"
    assert request.node.nodeid == "tests/test_xdist_groups.py::test_the_worker_sees_this_files_group" \
        "@tests/test_xdist_groups.py", f"node id {request.node.nodeid!r} lacks its xdist group"
