from bundle.metrics.segmentation import VolumeDice, la_presence, volume_dice
