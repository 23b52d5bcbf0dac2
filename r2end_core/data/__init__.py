"""Stage 0, prepare: the dataset contract, leave-one-out splits, histories and the item catalogue."""
