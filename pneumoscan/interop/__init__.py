"""Interoperability with hospital systems: DICOM scope checks and identifiers (:mod:`.dicom_scope`), results as a
DICOM Structured Report and Secondary Capture (:mod:`.sr`) or a FHIR R4 Observation (:mod:`.fhir`).

Submodules are imported on demand: :mod:`.dicom_scope` needs only pydicom (predict and serve use it on every
film), while :mod:`.sr` and :mod:`.fhir` load highdicom and fhir.resources only when a report is asked for.
"""
