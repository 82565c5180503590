from recbole_cstwa.data.dataset import DataFormatError, MultiTaskDataset
from recbole_cstwa.data.utils import create_dataset

__all__ = ["DataFormatError", "MultiTaskDataset", "create_dataset"]
