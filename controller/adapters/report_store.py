"""ReportStore on a blob container of the app's own storage account (CMK_REPORT_CONTAINER).

The container is created on the first save (the app's identity holds Storage Blob Data Contributor on
its own account). Reports are JSON; a missing blob or container reads as "no report yet".
"""

from __future__ import annotations

from azure.storage.blob import ContainerClient, ContentSettings

from controller.adapters.azure_errors import translated
from controller.adapters.created_once import CreatedOnce
from controller.errors import NotFound

_JSON = ContentSettings(content_type="application/json")


class BlobReportStore:
    def __init__(self, container: ContainerClient) -> None:
        self._container = container
        self._created = CreatedOnce(container.create_container, f"container {container.container_name}")

    def save(self, name: str, document: bytes) -> None:
        self._created()
        with translated(f"write report {name}"):
            self._container.upload_blob(name, document, overwrite=True, content_settings=_JSON)

    def load(self, name: str) -> bytes | None:
        try:
            with translated(f"read report {name}"):
                return self._container.download_blob(name).readall()
        except NotFound:  # no such blob, or no container yet
            return None
