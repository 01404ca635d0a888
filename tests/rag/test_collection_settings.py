"""Collection settings through RagService on a real data dir: they survive closing and reopening the
store, belong to one tenant's collection, go when the tenant is erased, and `appliance ingest
--kv-reuse` sets them locally."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.collection_settings import CollectionSettings
from tests.rag.cli import appliance
from tests.rag.conftest import ZEBRA_TXT


def test_settings_persist_across_a_reopen_and_stay_per_tenant(open_service, tmp_path):
    data_dir = tmp_path / "data"
    service = open_service(data_dir=data_dir)
    assert service.collection_settings("t1", "kb") == CollectionSettings(kv_reuse=None)
    assert service.update_collection_settings("t1", "kb", {"kv_reuse": "chunks"}).kv_reuse == "chunks"
    service.update_collection_settings("t2", "kb", {"kv_reuse": "prefix"})
    service.close()

    reopened = open_service(data_dir=data_dir)
    assert reopened.collection_settings("t1", "kb").kv_reuse == "chunks"
    assert reopened.collection_settings("t2", "kb").kv_reuse == "prefix"
    assert reopened.collection_settings("t1", "notes").kv_reuse is None
    assert reopened.update_collection_settings("t1", "kb", {"kv_reuse": None}).kv_reuse is None
    assert reopened.collection_settings("t2", "kb").kv_reuse == "prefix"
    with pytest.raises(ValueError, match="unknown collection setting 'colour'"):
        reopened.update_collection_settings("t1", "kb", {"colour": "blue"})
    with pytest.raises(ValueError, match="invalid collection name"):
        reopened.collection_settings("t1", "no/slashes")


def test_erasing_a_tenant_drops_its_settings_only(open_service):
    service = open_service()
    for tenant, collection in (("t1", "kb"), ("t1", "notes"), ("t2", "kb")):
        service.update_collection_settings(tenant, collection, {"kv_reuse": "chunks"})
    assert service.delete_tenant("t1")["collection_settings"] == 2
    assert service.collection_settings("t1", "kb").kv_reuse is None
    assert service.collection_settings("t2", "kb").kv_reuse == "chunks"


def test_local_ingest_sets_the_collection_default(open_service, tmp_path):
    data_dir = tmp_path / "data"
    (tmp_path / "zebra.txt").write_text(ZEBRA_TXT)
    result = appliance("ingest", str(tmp_path / "zebra.txt"), "--tenant", "t1", "--collection", "kb",
                       "--data-dir", str(data_dir), "--kv-reuse", "chunks", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "collection kb: kv_reuse chunks by default" in result.stderr
    service = open_service(data_dir=data_dir)
    assert service.collection_settings("t1", "kb").kv_reuse == "chunks"
    assert [Path(d.source).name for d in service.list_documents("t1", "kb")] == ["zebra.txt"]
