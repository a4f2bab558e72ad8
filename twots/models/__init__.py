"""Rank side, torch only: the 2TS family and its protocol, the baselines, the loss, and the table of model kinds."""
