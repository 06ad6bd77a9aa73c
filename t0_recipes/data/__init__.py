"""Rows, tasks, templates and the pre-training mixture: everything before a model is touched.

`tasks` (registry), `prompt` + `templates` + `mixture_templates` (prompt templates), `rows`
(local readers, task ids, `DataError`), `hub`, `mixture` (pre-training examples), `holdout`
(a ``t0_train`` cluster held out of the mixture: shot pool and evaluation pool), `validate`
(`check_data`: every file a run will read, checked before training), `collate` (tokenisation).
"""
