"""Studies in and results out over DICOMweb (QIDO-RS, WADO-RS, STOW-RS), with ``dicomweb-client``.

:func:`retrieve` saves a study's (or one series') instances into a local folder that the usual input discovery reads;
:func:`store` sends the DICOM outputs (SEG, SR) back to the server. Nothing on the server is changed or deleted:
the only write is STOW-RS of new instances (new UIDs), and only when asked.

Every failure is a :class:`DicomWebError` whose message is one line naming the server and the UID: an unreachable
server, a timeout, an unknown study or series, an answer that is not DICOM, a store the server refuses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

__all__ = ["DicomWebError", "check_uid", "retrieve", "store"]

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class DicomWebError(RuntimeError):
    """A DICOMweb transaction that failed; the message is one line naming the server and the UID."""


def check_uid(uid: str, what: str = "UID") -> str:
    """``uid`` when it is a DICOM UID (digits and dots, at most 64 characters), else :class:`ValueError`."""
    uid = str(uid).strip()
    if not UID_RE.match(uid) or len(uid) > 64:
        raise ValueError(f"{what} {uid[:80]!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def _client(url: str, timeout: float):
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=url, timeout=timeout)
    client.set_http_retry_params(retry=False)  # one clear answer, not minutes of back-off
    return client


def _why(e: BaseException, url: str, timeout: float) -> str:
    """One line for a failed request."""
    import requests

    if isinstance(e, requests.exceptions.Timeout):
        return f"no answer from {url} within {timeout:g} s"
    if isinstance(e, requests.exceptions.ConnectionError):
        return f"cannot reach the DICOMweb server {url} (connection refused or no route)"
    if isinstance(e, requests.exceptions.HTTPError) and e.response is not None:
        return f"{url} answered HTTP {e.response.status_code} {e.response.reason or ''}".rstrip()
    return f"{url}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


def retrieve(url: str, study_uid: str, folder: str, series_uid: str | None = None, timeout: float = 60.0) -> list[str]:
    """Save the instances of a study (or of one of its series) from a DICOMweb server into ``folder``.

    Files are named by their UIDs (``<folder>/<series uid>/<SOP instance uid>.dcm``, each UID checked to be a UID,
    so nothing from the server can place a file outside ``folder``); existing files are not replaced.

    Args:
        url: the server's DICOMweb root (e.g. ``http://127.0.0.1:8042/dicom-web``).
        study_uid: StudyInstanceUID.
        folder: where the files go (created).
        series_uid: only this series of the study.
        timeout: seconds to wait for each answer.

    Returns:
        the files written, or already there.

    Raises:
        DicomWebError: naming the server and the UID (unreachable, timeout, not found, not DICOM).
        ValueError: a UID that is not one.
    """
    import pydicom
    import requests

    from bundle.outputs import atomic_write

    study_uid = check_uid(study_uid, "study UID")
    series_uid = check_uid(series_uid, "series UID") if series_uid else None
    what = f"study {study_uid}" + (f" series {series_uid}" if series_uid else "")
    client = _client(url, timeout)
    try:
        found = client.search_for_series(study_instance_uid=study_uid, fields=["SeriesInstanceUID"])
    except requests.exceptions.HTTPError as e:
        if e.response is not None and e.response.status_code == 404:
            raise DicomWebError(f"{what}: not found on {url}") from None
        raise DicomWebError(f"{what}: {_why(e, url, timeout)}") from None
    except (requests.exceptions.RequestException, ValueError) as e:
        raise DicomWebError(f"{what}: {_why(e, url, timeout)}") from None
    series = []
    for item in found or []:
        values = item.get("0020000E", {}).get("Value") or []
        if values:
            series.append(str(values[0]))
    if series_uid:
        series = [s for s in series if s == series_uid]
    if not series:
        raise DicomWebError(f"{what}: not found on {url}")
    written = []
    for uid in series:
        try:
            safe_series = check_uid(uid, "series UID")
        except ValueError:
            raise DicomWebError(f"{what}: {url} lists a series whose UID {uid[:80]!r} is not a DICOM UID") from None
        target = os.path.join(folder, safe_series)
        os.makedirs(target, exist_ok=True)
        try:
            for k, ds in enumerate(client.iter_series(study_instance_uid=study_uid, series_instance_uid=uid)):
                sop = str(ds.get("SOPInstanceUID", ""))
                name = f"{sop}.dcm" if UID_RE.match(sop) and len(sop) <= 64 else f"instance_{k:05d}.dcm"
                path = os.path.join(target, name)
                if not os.path.exists(path):
                    atomic_write(path, lambda p, ds=ds: pydicom.dcmwrite(p, ds, enforce_file_format=True))
                written.append(path)
        except requests.exceptions.RequestException as e:
            raise DicomWebError(f"study {study_uid} series {uid}: {_why(e, url, timeout)}") from None
        except (ValueError, TypeError, pydicom.errors.InvalidDicomError) as e:
            raise DicomWebError(
                f"study {study_uid} series {uid}: {url} sent something that is not DICOM ({type(e).__name__})"
            ) from None
    return written


def store(url: str, files: Sequence[str], study_uid: str, timeout: float = 60.0) -> list[str]:
    """Send DICOM files to a DICOMweb server (STOW-RS) into their study.

    Args:
        url: the server's DICOMweb root.
        files: the files (SEG, SR) to store.
        study_uid: the study they belong to (checked against each file's StudyInstanceUID).
        timeout: seconds to wait for the answer.

    Returns:
        the SOP instance UIDs stored, each checked to be on the server afterwards (QIDO-RS).

    Raises:
        DicomWebError: naming the server, the study and the instance the server refused.
    """
    import pydicom
    import requests

    study_uid = check_uid(study_uid, "study UID")
    datasets = [pydicom.dcmread(f) for f in files]
    for f, ds in zip(files, datasets):
        if str(ds.get("StudyInstanceUID", "")) != study_uid:
            raise DicomWebError(
                f"study {study_uid}: {os.path.basename(f)} belongs to study "
                f"{ds.get('StudyInstanceUID', '?')}, not stored on {url}"
            )
    if not datasets:
        return []
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    client = _client(url, timeout)
    try:
        answer = client.store_instances(datasets, study_instance_uid=study_uid)
    except requests.exceptions.HTTPError as e:
        raise DicomWebError(
            f"study {study_uid}: storing {len(uids)} instance(s) ({', '.join(uids)}) refused: {_why(e, url, timeout)}"
        ) from None
    except requests.exceptions.RequestException as e:
        raise DicomWebError(f"study {study_uid}: storing {len(uids)} instance(s): {_why(e, url, timeout)}") from None
    failed = [str(item.get("ReferencedSOPInstanceUID", "?")) for item in answer.get("FailedSOPSequence", [])]
    if failed:
        raise DicomWebError(f"study {study_uid}: {url} refused to store instance(s) {', '.join(failed)}")
    # a server may answer success and still drop an instance (Orthanc's filters do): check that each one is there
    missing = []
    try:
        for ds in datasets:
            found = client.search_for_instances(
                study_instance_uid=study_uid,
                series_instance_uid=str(ds.SeriesInstanceUID),
                search_filters={"SOPInstanceUID": str(ds.SOPInstanceUID)},
            )
            if not found:
                missing.append(str(ds.SOPInstanceUID))
    except requests.exceptions.RequestException as e:
        why = _why(e, url, timeout)
        raise DicomWebError(f"study {study_uid}: stored, but cannot check the instances: {why}") from None
    if missing:
        raise DicomWebError(
            f"study {study_uid}: {url} answered the store but did not keep instance(s) "
            f"{', '.join(missing)} (filtered out or refused by the server)"
        )
    return uids
