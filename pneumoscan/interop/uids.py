"""The root of every DICOM UID pneumoscan derives (its reports' and overlays' instance, series and tracking UIDs, and
its models' device UIDs): pydicom's, or an organisation's own from ``$PNEUMOSCAN_UID_ROOT``, read here only.

A UID is the root and then digits of a SHA-512 of what the object is (:func:`derive_uid`), cut to DICOM's 64
characters: the same inputs give the same UID, so a resend re-sends the object a PACS holds. A longer root leaves
fewer of those digits, so a root is refused when it would leave fewer than :data:`SUFFIX_DIGITS`, as it is when it is
no UID root: a UID under it would be refused by a PACS, or filed under someone else's arc.
"""

from __future__ import annotations

import json
import os
import re
import uuid

from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

UID_ROOT_ENV = "PNEUMOSCAN_UID_ROOT"
MAX_UID_LENGTH = 64  # PS3.5 9.1
# the fewest digits of its own a derived UID keeps: about 99 bits, so that among a billion objects the chance of two
# sharing a UID (one report filed in place of another) is about one in a trillion
SUFFIX_DIGITS = 30
MAX_ROOT_LENGTH = MAX_UID_LENGTH - SUFFIX_DIGITS  # its final dot included
UUID_ARC = "2.25."  # ITU-T X.667: what follows is a UUID as an integer (at most 39 digits), not a hash of 59
_COMPONENT = re.compile(r"0|[1-9][0-9]*")


def _fault(root: str) -> str | None:
    """Why ``root`` (with its final dot) is no UID root pneumoscan can derive UIDs under; None when it is one."""
    if not re.fullmatch(r"[0-9.]+", root):
        return "it holds characters other than digits and dots"
    components = root[:-1].split(".")
    if "" in components:
        return "it has an empty component (a leading dot, or two dots in a row)"
    if zeroed := next((c for c in components if not _COMPONENT.fullmatch(c)), None):
        return f"its component {zeroed} has a leading zero"
    if components[0] not in ("0", "1", "2"):
        return "its first component is not 0, 1 or 2, as the first of every OID is"
    if root == UUID_ARC:
        return "2.25 is the arc of UUIDs, whose UIDs are a UUID as one integer, not a root of its own"
    if len(root) > MAX_ROOT_LENGTH:
        return (f"it is {len(root)} characters with its final dot; at most {MAX_ROOT_LENGTH} leave each UID "
                f"{SUFFIX_DIGITS} digits of its own within the {MAX_UID_LENGTH} DICOM allows")
    return None


def uid_root() -> str:
    """The root every derived UID starts with, ending in a dot: ``$PNEUMOSCAN_UID_ROOT`` (a final dot added when it
    has none), else pydicom's. A value set but not a UID root is refused with why, never replaced by pydicom's root:
    an organisation's objects filed under another arc would go unnoticed."""
    value = os.environ.get(UID_ROOT_ENV)
    if value is None:
        return PYDICOM_ROOT_UID
    root = value.strip()
    if not root:
        raise ValueError(f"{UID_ROOT_ENV} is set but blank: unset it to derive UIDs under pydicom's root, or set "
                         "it to the organisation's UID root")
    root = root if root.endswith(".") else root + "."
    if (why := _fault(root)) is not None:
        raise ValueError(f"{UID_ROOT_ENV} is not a valid UID root: {why}")
    return root


def derive_uid(entropy: list[str]) -> UID:
    """The UID of what ``entropy`` identifies, under :func:`uid_root`: the same for the same texts and root."""
    return generate_uid(prefix=uid_root(), entropy_srcs=entropy)


def film_identity(study_uid: str, series_uid: str, sop_uid: str, source: Dataset | None) -> list[str]:
    """What tells a film from every other, for the UIDs of what is made of it: its study, series and instance UIDs
    and, from ``source`` (its header), its patient (PatientID, IssuerOfPatientID). A SOP Instance UID alone is not
    enough: a modality or a re-import that repeats one gave films of two patients the same report UIDs, so a PACS
    filed one patient's report in place of the other's."""
    patient = [] if source is None else [str(source.get(k) or "").strip() for k in ("PatientID", "IssuerOfPatientID")]
    return [str(study_uid), str(series_uid), str(sop_uid), *patient]


def _derivation(film: list[str], model_name: str, model_version: str, mode: str, kind: str) -> str:
    """The identity of one object made for a film, as one text in which no two identities read alike (pydicom joins
    entropy sources with nothing between them: patient "A" of issuer "BC" would be patient "AB" of issuer "C")."""
    return json.dumps([*film, model_name, model_version, mode, kind])


def derived_uid(film: list[str], model_name: str, model_version: str, mode: str, kind: str) -> UID:
    """The UID of one object made for a film (``film``: :func:`film_identity`; ``kind``: the report, its series, the
    overlay, ...): the same for the same film, model (name and weights' digest) and scoring ``mode`` (backend, TTA),
    so a rerun re-sends the objects a PACS already holds instead of filing new ones, and another film, model or mode
    files its own."""
    return derive_uid([_derivation(film, model_name, model_version, mode, kind)])


def derived_uuid(film: list[str], model_name: str, model_version: str, mode: str, kind: str) -> uuid.UUID:
    """:func:`derived_uid`'s identity as a UUID (version 5): a FHIR identifier that is stable in the same way."""
    return uuid.uuid5(uuid.NAMESPACE_OID, _derivation(film, model_name, model_version, mode, kind))
