"""Rows, tasks, templates and the pre-training mixture: everything before a model is touched."""
