"""Fixtures of the dashboard tests: a synthetic appliance for snapshots, a real one for everything else.

The real server (real model, Qdrant Edge, SQLite) is started once for the whole tests/tui package:
it takes most of a minute to load on a CPU, and the tests leave it as they found it where it
matters (admission resumed).
"""

from __future__ import annotations

import pytest

from tests.server.helpers import ServerProcess, served
from tests.tui.synthetic import SyntheticAppliance


@pytest.fixture(scope="package")
def synthetic() -> SyntheticAppliance:
    appliance = SyntheticAppliance().start()
    try:
        yield appliance
    finally:
        appliance.stop()


@pytest.fixture(scope="package")
def server(tmp_path_factory) -> ServerProcess:
    data_dir = tmp_path_factory.mktemp("appliance-tui") / "data"
    with served(ServerProcess(data_dir)) as proc:
        yield proc
