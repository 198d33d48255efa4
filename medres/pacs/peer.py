"""A PACS and how medres talks to it: one object for both protocols (DIMSE, DICOMweb)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from medres.pacs import dicomweb, dimse
from medres.pacs.query import Instance, StudyQuery
from medres.pacs.url import DEFAULT_CALLING_AET, Credentials, PacsUrl


@dataclass(frozen=True)
class Peer:
    """A PACS and how to talk to it."""

    url: PacsUrl
    calling_aet: str = DEFAULT_CALLING_AET
    credentials: Credentials = field(default_factory=Credentials)
    retrieve_with: str = "get"  # DIMSE: "get" (C-GET) or "move" (C-MOVE to medres's own SCP)
    move_port: int = 11112  # DIMSE C-MOVE: where medres's storage SCP listens

    def echo(self) -> None:
        """C-ECHO (DIMSE) or one QIDO-RS request (DICOMweb); raise PacsError on failure."""
        if self.url.kind == "dimse":
            dimse.echo(self.url, self.calling_aet)
        else:
            dicomweb.echo(self.url, self.credentials)

    def find_studies(self, query: StudyQuery) -> list[str]:
        if self.url.kind == "dimse":
            return dimse.find_studies(self.url, self.calling_aet, query)
        return dicomweb.find_studies(self.url, self.credentials, query)

    def find_instances(self, study_uid: str) -> list[Instance]:
        if self.url.kind == "dimse":
            return dimse.find_instances(self.url, self.calling_aet, study_uid)
        return dicomweb.find_instances(self.url, self.credentials, study_uid)

    def retrieve(self, instances: list[Instance], store: Callable[[Dataset], None]) -> None:
        if self.url.kind == "dicomweb":
            dicomweb.get_instances(self.url, self.credentials, instances, store)
        elif self.retrieve_with == "move":
            dimse.move_instances(self.url, self.calling_aet, instances, store, self.move_port)
        else:
            dimse.get_instances(self.url, self.calling_aet, instances, store)

    def store(self, paths: list[Path]) -> None:
        """Send files (C-STORE or STOW-RS); raise PacsError if any is refused."""
        if self.url.kind == "dimse":
            dimse.store_files(self.url, self.calling_aet, paths)
        else:
            dicomweb.store_files(self.url, self.credentials, paths)
