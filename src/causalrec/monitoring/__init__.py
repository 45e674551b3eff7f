"""Evidently drift reports and the drift decision that triggers retraining."""
