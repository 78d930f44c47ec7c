"""hydra/launcher=packed: the runs of a sweep trained side by side in one process, sharing its GPU."""
