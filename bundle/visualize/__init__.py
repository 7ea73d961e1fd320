from bundle.visualize.hirescam import HiResCAM, scale_to_unit
