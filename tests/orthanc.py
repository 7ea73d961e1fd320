"""A real Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``) on 127.0.0.1 for the tests.

Each server gets a temporary storage folder, free ports, no authentication, the DICOMweb plugin, and optionally a
Lua script; it is stopped (and its folder removed with the test's temporary tree) after. Where Orthanc is absent the
tests that need it are skipped, unless LA_LGE_QA_REQUIRE_ORTHANC=1 (set by .ci/run), which makes them fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

REQUIRED = os.environ.get("LA_LGE_QA_REQUIRE_ORTHANC") == "1"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_or_skip() -> tuple[str, str]:
    """The Orthanc executable and its DICOMweb plugin; skip (or fail, where required) when either is missing."""
    exe = shutil.which("Orthanc")
    plugin = next(
        (
            os.path.join(d, "libOrthancDicomWeb.so")
            for d in PLUGIN_DIRS
            if os.path.isfile(os.path.join(d, "libOrthancDicomWeb.so"))
        ),
        None,
    )
    if exe is None or plugin is None:
        message = "Orthanc with its DICOMweb plugin not found (apt-get install orthanc orthanc-dicomweb)"
        if REQUIRED:
            pytest.fail(message + " (LA_LGE_QA_REQUIRE_ORTHANC=1)")
        pytest.skip(message)
    return exe, plugin


class Orthanc:
    """A running Orthanc: ``url`` (REST root), ``dicomweb`` (DICOMweb root); :meth:`stop` ends it."""

    def __init__(self, folder: str, lua: str | None = None) -> None:
        exe, plugin = orthanc_or_skip()
        os.makedirs(folder, exist_ok=True)
        self.port = free_port()
        config = {
            "Name": "la-lge-qa-test",
            "StorageDirectory": os.path.join(folder, "db"),
            "IndexDirectory": os.path.join(folder, "db"),
            "HttpPort": self.port,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        if lua:
            path = os.path.join(folder, "filter.lua")
            with open(path, "w") as f:
                f.write(lua)
            config["LuaScripts"] = [path]
        cfg = os.path.join(folder, "orthanc.json")
        with open(cfg, "w") as f:
            json.dump(config, f)
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.log = open(os.path.join(folder, "orthanc.log"), "w")
        self.proc = subprocess.Popen([exe, cfg], stdout=self.log, stderr=subprocess.STDOUT, cwd=folder)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}); see {self.log.name}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within 30 s; see {self.log.name}")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def upload(self, files) -> None:
        """Store files through Orthanc's REST API (POST /instances), as a modality or a PACS import would."""
        for f in files:
            with open(f, "rb") as fh:
                req = urllib.request.Request(
                    self.url + "/instances",
                    data=fh.read(),
                    method="POST",
                    headers={"Content-Type": "application/dicom"},
                )
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()

    def series_of(self, study_uid: str) -> list[dict]:
        """The study's series as DICOMweb (QIDO-RS) lists them: modality, description, instance count, UID."""
        with urllib.request.urlopen(f"{self.dicomweb}/studies/{study_uid}/series", timeout=10) as r:
            items = json.loads(r.read() or b"[]")

        def value(item, tag):
            return (item.get(tag, {}).get("Value") or [None])[0]

        return [
            {
                "modality": value(s, "00080060"),
                "description": value(s, "0008103E"),
                "instances": value(s, "00201209"),
                "uid": value(s, "0020000E"),
            }
            for s in items
        ]

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
