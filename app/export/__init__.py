"""Results back to the PACS and the EHR: a report version as DICOM SR (TID 1500) and FHIR R4,
delivered to configured destinations."""
