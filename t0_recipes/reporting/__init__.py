"""Medians, spreads, intervals; JSON, Markdown and PNG reports."""
