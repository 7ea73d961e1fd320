"""LA LGE-MRI quality assessment: the custom components that the bundle's configs name by dotted path."""

import logging
import warnings

__version__ = "0.10.0"  # = configs/metadata.json "version" (tests/test_configs.py checks)

# MONAI registers an nvImageCodec DICOM decoder with every LoadImage; where the optional GPU codec is not
# installed it warns on each construction. The fallback (pydicom's own decoders) is what we want on CPU.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin")
