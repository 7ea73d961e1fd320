from bundle.networks.prepare import AUTOCAST_DTYPES, prepare_network
