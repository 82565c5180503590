from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender

__all__ = ["MultiTaskRecommender"]
