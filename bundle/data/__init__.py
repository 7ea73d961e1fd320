from bundle.data.datalist import ATTRIBUTES, SCORE_KEYS, DatalistError, load_datalist, to_binary, validate_datalist
from bundle.data.demo import make_demo_dataset
from bundle.data.prepare import DataSplit, cached_slices, prepare_data, resolve_datalist
from bundle.data.qa import PrepareQABatch, QASlices
from bundle.data.slices import SliceCache, volume_transform
from bundle.data.split import assign_split, check_split, load_split, save_split, split_patients
