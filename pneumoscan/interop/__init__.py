"""Interoperability with hospital systems: results as a DICOM Structured Report and Secondary Capture (:mod:`.sr`),
as a FHIR R4 Observation (:mod:`.fhir`), written next to `predict` results (:mod:`.reports`), and a study read from
and written back to a PACS over DICOMweb (:mod:`.dicomweb`), or films a PACS sends over DIMSE scored and their
reports sent back (:mod:`.dimse`), both through :mod:`.study`; the root of every UID they derive is in :mod:`.uids`.
The scope checks and DICOM identifiers every result carries live a layer lower, in :mod:`pneumoscan.data.scope`.

Submodules are imported on demand, so highdicom and fhir.resources load only when asked for.
"""
