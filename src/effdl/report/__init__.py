"""The HTML report (plus pareto.csv) from typed Results."""
from .html import render_html, write_report

__all__ = ["render_html", "write_report"]
