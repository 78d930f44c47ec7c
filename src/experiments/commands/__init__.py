"""The commands, side by side: each module holds one, as `experiments COMMAND` runs it."""
