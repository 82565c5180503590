from recbole_cstwa.data.dataset import DataFormatError, MultiTaskDataset
from recbole_cstwa.data.utils import create_dataset, data_preparation

__all__ = ["DataFormatError", "MultiTaskDataset", "create_dataset", "data_preparation"]
