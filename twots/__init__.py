"""twots: the two-time-scale (2TS) recommender."""
