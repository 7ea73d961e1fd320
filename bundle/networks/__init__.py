from bundle.networks.ensemble import Ensemble, FlipTTA, Rescaled
from bundle.networks.loading import build_network, load_network
from bundle.networks.plan import (
    QA_DEFAULTS,
    PlanError,
    build_from_plan,
    load_plan,
    load_qa_plan,
    plan_path,
    write_detector_plan,
    write_plan,
    write_qa_plan,
)
from bundle.networks.prepare import AUTOCAST_DTYPES, prepare_network
from bundle.networks.qa import CAM_LAYER, QANet, SupConNet, load_encoder_weights, qa_logits
