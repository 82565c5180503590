from recbole_cstwa.data.dataset import MultiTaskDataset
from recbole_cstwa.data.utils import create_dataset, data_preparation

__all__ = ["MultiTaskDataset", "create_dataset", "data_preparation"]
