import pytest

from cluster import Cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("firetower"))
    yield c
    c.stop()
