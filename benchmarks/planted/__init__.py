"""Helpers of ``benchmarks/planted_skills.py``: the planted-skill generator, router recovery, the report."""
