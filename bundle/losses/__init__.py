from bundle.losses.qa import MultiTaskLoss, OrdinalBCE, QALoss, balanced_pos_weight, resolve_pos_weight
from bundle.losses.supcon import MultiLabelSupConLoss, SupConLoss
