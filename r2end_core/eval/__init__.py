"""Evaluation: full-item ranking metrics, and scoring any recommender on a split of the prepared users."""
