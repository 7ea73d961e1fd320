from bundle.optimizers.lars import LARS
from bundle.optimizers.schedules import scaled_lr, warmup_schedule, world_size
