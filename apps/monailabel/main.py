"""MONAI Label app of the LA LGE-MRI QA bundle: LA segmentation and scan quality served to 3D Slicer, and retraining.

    monailabel start_server --app apps/monailabel --studies <folder of NIfTI volumes / DICOM series folders, or a
        DICOMweb URL such as http://127.0.0.1:8042/dicom-web> \
        [--conf bundle_root <bundle>] [--conf overlays a.yaml,b.yaml] ...

Everything comes from the bundle on disk (by default the repository this app lives in); nothing is downloaded.
Options (``--conf key value``), documented in docs/monailabel.md:

- ``bundle_root``: the bundle folder (``configs/``, ``models/``); default: this repository.
- ``overlays``: comma-separated config overlays added to every workflow (e.g. a site's ``spatial_size``,
  ``la_threshold``, ``qa_spatial_size``, ``qa_threshold``); ``la_overlays``: only to the LA detector's training
  (inference takes the network from the checkpoint's plan); ``qa_overlays``: only to the QA network's definition.
- ``la_checkpoint``: the detector served, in ``models/`` (default: ``model.pt``, a site's own retrained detector,
  when it exists at start-up, else the shipped ``detector.pt``).
- ``qa_config``, ``qa_checkpoint``: the QA network's workflow config and weights (default
  ``configs/qa_baseline.yaml`` (the network of a checkpoint without a plan), ``models/qa.pt`` (the shipped network,
  its plan beside it); the QA task is offered only when both exist).
- ``patient_pattern``: regular expression whose first group is the patient id in a study's id (training split).
- ``max_epochs``: default epochs of a retraining request (40).
- ``dicomweb_search``: with ``--studies http://.../dicom-web``, the QIDO-RS filter of the series offered, as JSON
  (default ``{"Modality": "MR"}``; MONAI Label's ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER`` is used when set to
  anything but its default, ``{"Modality": "CT"}``).
"""

from __future__ import annotations

import json
import logging
import os
import sys

CODE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if CODE_ROOT not in sys.path:  # the bundle's components (`bundle` package) are imported by its configs
    sys.path.insert(0, CODE_ROOT)

from lib.dicom import convert_series_folders  # noqa: E402
from lib.infer_la import LASegmentation  # noqa: E402
from lib.infer_qa import QAClassification  # noqa: E402
from lib.train import BundleRunnerTrain  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402

logger = logging.getLogger(__name__)

LA_MODEL = "la_segmentation"
QA_MODEL = "qa"


class LALGEQAApp(MONAILabelApp):
    """LA segmentation (``la_segmentation``), scan quality (``qa``, once the QA network exists) and LA retraining."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        from bundle.utils import quiet_third_party

        quiet_third_party()  # the app is an entry point: pydicom's and the optional GPU decoder's noise quieted
        self.bundle_root = os.path.abspath(conf.get("bundle_root") or CODE_ROOT)
        configs = os.path.join(self.bundle_root, "configs")
        if not os.path.isfile(os.path.join(configs, "common.yaml")):
            raise FileNotFoundError(f"bundle_root {self.bundle_root}: no configs/common.yaml (not a bundle)")
        self.common = os.path.join(configs, "common.yaml")
        self.overlays = self._files(conf.get("overlays"))
        self.la_overlays = self._files(conf.get("la_overlays"))
        self.qa_overlays = self._files(conf.get("qa_overlays"))
        with open(os.path.join(configs, "metadata.json")) as f:
            version = json.load(f).get("version", "0")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="LA LGE-MRI quality assessment",
            description="Left-atrial segmentation and LGE-MRI quality for fibrosis assessment",
            version=version,
        )

    def _files(self, value: str | None) -> list[str]:
        """Comma-separated config files, relative ones taken from the bundle root; each must exist."""
        files = [os.path.join(self.bundle_root, f.strip()) for f in (value or "").split(",") if f.strip()]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"config overlays not found: {missing}")
        return files

    def init_datastore(self) -> Datastore:
        if not self.studies.startswith(("http://", "https://")):
            convert_series_folders(self.studies)  # DICOM series folders -> <folder>.nii.gz, once
        return super().init_datastore()

    def _download_dcmqi_tools(self) -> None:
        """Nothing to download: DICOM SEG labels are written by pydicom-seg (lib/dicomweb.py), not dcmqi."""

    def _init_dicomweb_datastore(self) -> Datastore:
        """MONAI Label's DICOMweb datastore, built as MONAI Label builds it (client, credentials, URL prefixes,
        cache, search filter from its settings), saving final labels as the bundle's LA SEG (lib/dicomweb.py)."""
        from dicomweb_client.session_utils import create_session_from_user_pass
        from lib.dicomweb import LADICOMWebDatastore
        from monailabel.config import settings
        from monailabel.datastore.dicom import DICOMwebClientX

        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            session = create_session_from_user_pass(
                settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
            )
        client = DICOMwebClientX(
            url=self.studies,
            session=session,
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None
        # the series offered: MR (LGE-MRI) where MONAI Label's setting is its default, CT; a site's own filter stays
        search = dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER or {})
        if search == {"Modality": "CT"}:
            search = {"Modality": "MR"}
        if self.conf.get("dicomweb_search"):
            search = json.loads(self.conf["dicomweb_search"])
        logger.info(f"DICOMweb datastore: {self.studies} (DICOM SEG labels written by pydicom-seg)")
        return LADICOMWebDatastore(
            client=client,
            search_filter=search,
            cache_path=cache,
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
            convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        # both tasks run the bundle's two-stage inference config (stage 1 alone for the LA task)
        la_files = [self.common, os.path.join(self.bundle_root, "configs", "inference.yaml"), *self.overlays]
        site = os.path.isfile(os.path.join(self.bundle_root, "models", "model.pt"))
        la_ckpt = self.conf.get("la_checkpoint") or ("model.pt" if site else "detector.pt")
        la = LASegmentation(self.bundle_root, self.conf, la_files, ckpt_name=la_ckpt)
        if la.is_valid():
            infers[LA_MODEL] = la
        else:
            logger.warning(f"{LA_MODEL} not offered: no {self.bundle_root}/models/{la_ckpt} with its plan")
        qa_config = os.path.join(self.bundle_root, self.conf.get("qa_config", "configs/qa_baseline.yaml"))
        qa_ckpt = os.path.join(
            self.bundle_root, self.conf.get("qa_checkpoint", "models/qa.pt")
        )  # shipped, with its plan
        qa_files = [self.common, qa_config, *self.overlays, *self.qa_overlays]  # the QA network's definition
        qa = QAClassification(la, qa_files, qa_ckpt)
        if qa.is_valid():
            infers[QA_MODEL] = qa
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        train = os.path.join(self.bundle_root, "configs", "train.yaml")
        files = [self.common, train, *self.overlays, *self.la_overlays]
        return {
            LA_MODEL: BundleRunnerTrain(
                self.bundle_root,
                CODE_ROOT,
                files,
                ckpt_name="model.pt",
                patient_pattern=self.conf.get("patient_pattern"),
                max_epochs=int(self.conf.get("max_epochs", 40)),
            )
        }
