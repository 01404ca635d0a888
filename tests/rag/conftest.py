"""Fixtures for the RAG tests: one real embedder for the session, real services on tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag import RagService
from tests.rag.pdf import make_pdf

SQUAD_DOCS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "squad-rag"


@pytest.fixture(scope="session")
def embedder():
    from rag.embedder import Embedder

    return Embedder(device="cpu")


@pytest.fixture
def open_service(tmp_path, embedder):
    """Factory for RagServices sharing the session's embedder; all are closed at teardown."""
    services: list[RagService] = []

    def factory(data_dir: Path | None = None, qdrant_url: str | None = None, settings=None) -> RagService:
        service = RagService(
            data_dir or tmp_path / "data", qdrant_url=qdrant_url, settings=settings, embedder=embedder
        )
        services.append(service)
        return service

    yield factory
    for service in services:
        service.close()


@pytest.fixture(params=["edge", "server"])
def backend_url(request, tmp_path) -> str | None:
    """None = embedded Qdrant Edge; `local:` = the qdrant-client server adapter in local mode."""
    return None if request.param == "edge" else f"local:{tmp_path / 'qdrant-local'}"


ZEBRA_TXT = """Zebra field notes

The plains zebra grazes on tough grasses across the Serengeti and migrates with the wildebeest.

Each zebra has a unique pattern of black and white stripes, much like a human fingerprint.
"""

VOLCANO_MD = """# Volcanoes

Volcanoes form where magma reaches the surface of the crust.

## Iceland

Eyjafjallajökull erupted in April 2010, and its ash cloud grounded flights across Europe for days.

## Hawaii

Kilauea on the Big Island has erupted almost continuously, feeding lava lakes in its caldera.
"""

PAGE_HTML = """<!doctype html><html><head><title>Coffee</title>
<style>.x { color: red } /* stylesheetdecoyword */</style>
<script>var scriptdecoyword = "never index me";</script></head>
<body><h1>Coffee roasting</h1>
<p>Light roasts keep more of the acidity and floral aroma of the coffee bean.</p>
<p>Dark roasts develop bitter, smoky flavours as sugars caramelise in the drum.</p>
<script>console.log("scriptdecoyword again")</script>
</body></html>
"""

APOLLO_PDF = make_pdf(
    [
        ["The Apollo 11 mission landed the lunar module Eagle", "on the Moon on 20 July 1969."],
        ["Neil Armstrong and Buzz Aldrin walked on the surface", "while Michael Collins orbited above."],
    ],
    title="Apollo 11",
)

# query -> (file name expected at rank 1, phrase its text must contain)
EXPECTED_TOP_HITS = {
    "Which animal has stripes like a fingerprint?": ("zebra.txt", "stripes"),
    "Which volcano's ash cloud grounded flights across Europe in 2010?": ("volcano.md", "Eyjafjallajökull"),
    "How do dark roasts taste?": ("page.html", "Dark roasts"),
    "When did Apollo 11 land on the Moon?": ("apollo.pdf", "20 July 1969"),
}


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    root = tmp_path / "corpus"
    (root / "notes").mkdir(parents=True)
    (root / "guide" / "deep").mkdir(parents=True)
    (root / "web").mkdir()
    (root / "notes" / "zebra.txt").write_text(ZEBRA_TXT)
    (root / "guide" / "deep" / "volcano.md").write_text(VOLCANO_MD)
    (root / "web" / "page.html").write_text(PAGE_HTML)
    (root / "apollo.pdf").write_bytes(APOLLO_PDF)
    return root
