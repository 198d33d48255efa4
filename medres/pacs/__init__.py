"""DICOM in, DICOM out: a PACS named by a URL (DICOMweb or DIMSE), studies pulled into a
folder or received by a storage SCP, results written as standard DICOM objects (TID 1500
SR, parametric map, secondary capture) and pushed back.

Modules: :mod:`.url` (a PACS URL and its credentials), :mod:`.dimse` and :mod:`.dicomweb`
(the two protocols, through pynetdicom and dicomweb-client), :mod:`.pull`, :mod:`.push`,
:mod:`.listen` and :mod:`.results`.
"""
