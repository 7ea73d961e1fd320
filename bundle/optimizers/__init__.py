from bundle.optimizers.schedules import scaled_lr, warmup_schedule, world_size
