from bundle.optimizers.lars import LARS
