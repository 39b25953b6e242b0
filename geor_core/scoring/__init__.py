"""Scoring: rewards, the field's metrics, `geor score`, predictions tables, analysis, plots and the evaluation report."""
